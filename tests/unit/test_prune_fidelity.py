"""Embedding fidelity of pruned encoders (measure/fidelity.py): sentence embeddings against a
per-sequence hand computation without padding, the cosine against numpy, and ``headgame prune``
on a tiny BERT reporting it beside the pseudo-perplexity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from headgame.measure.fidelity import fidelity, sentence_embeddings
from tests.unit.test_prune_cli import files, run  # noqa: F401  (fixture)


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=32)).eval()


def _by_hand(model, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Each sequence alone, its padding cut off: the mean of its last hidden states, unit length."""
    encoder = getattr(model, "bert", model)  # an MLM model: its encoder, before the head
    rows = []
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        with torch.no_grad():
            h = encoder(input_ids=ids[i : i + 1, :n]).last_hidden_state[0].numpy().astype(np.float64)
        v = h.mean(0)
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


def test_sentence_embeddings_mean_pool_the_real_tokens_only():
    from headgame.data.texts import Sequences

    model = _tiny_bert()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (5, 11), generator=g)
    mask = torch.ones_like(ids)
    for i, n in enumerate((11, 7, 3, 9, 1)):  # right padding of different lengths
        mask[i, n:] = 0
        ids[i, n:] = 0
    seqs = Sequences(ids, mask, int(mask.sum()), 5, "t")
    got = sentence_embeddings(model, seqs, batch_size=2).numpy()
    assert got.shape == (5, 16)
    np.testing.assert_allclose(got, _by_hand(model, ids, mask), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_fidelity_is_the_per_sequence_cosine():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    cos = np.array([float(np.dot(x, y)) for x, y in zip(a, b)])
    got = fidelity(torch.tensor(a), torch.tensor(b))
    assert got["cosine_mean"] == pytest.approx(cos.mean()) and got["cosine_min"] == pytest.approx(cos.min())
    assert got["cosine_sd"] == pytest.approx(cos.std(ddof=1)) and got["n_sequences"] == 6
    assert fidelity(torch.tensor(a), torch.tensor(a))["cosine_mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same sequences"):
        fidelity(torch.tensor(a), torch.tensor(b[:3]))


def test_prune_reports_embedding_cosine_for_an_encoder(tmp_path, files):  # noqa: F811
    """Every model of an encoder gets its cosine beside its pseudo-perplexity, and a hand
    computation on the saved pruned model reproduces it."""
    from headgame.measure.perplexity import gsm8k_set
    from headgame.models.load import load_model

    code, out = run(tmp_path, files, "--criterion", "ablation", "--fractions", "0.25,0.5", "--fraction", "0.25",
                    "--compare-criteria", "--criteria", "ablation,random", "--random-seeds", "2", model="tiny-bert")
    assert code == 0
    res = json.loads((out / "pruning.json").read_text())
    assert res["base"]["perplexity"]["gsm8k"]["embedding"]["cosine_mean"] == pytest.approx(1.0)
    c = json.loads((out / "curves.json").read_text())
    assert c["base"]["cos_gsm8k"] == pytest.approx(1.0) and "cos_<set>" in c["notes"]
    abl = c["criteria"]["ablation"]["cos_wikitext2"]
    assert all(-1.0 <= v < 1.0 - 1e-6 for v in abl)  # pruning heads moves the embeddings
    band = c["criteria"]["random"]["cos_gsm8k"]
    assert all(b["n"] == 2 and b["min"] <= b["mean"] <= b["max"] for b in band)
    assert "emb. cos" in (out / "pruning_table.md").read_text()
    # by hand: the saved model (ablation at 25 %) against the unpruned one on the GSM8K sequences
    base, pruned = load_model("tiny-bert"), load_model(res["saved_model"])
    es = gsm8k_set(base.tokenizer, str(files[0]), max_len=64, max_tokens=256)
    want = (_by_hand(pruned.model, es.seqs.input_ids, es.seqs.attention_mask)
            * _by_hand(base.model, es.seqs.input_ids, es.seqs.attention_mask)).sum(1)
    got = res["results_by_fraction"]["0.25"]["ablation"]["perplexity"]["gsm8k"]["embedding"]
    assert got["n_sequences"] == len(want) and got["cosine_mean"] == pytest.approx(want.mean(), abs=1e-5)
