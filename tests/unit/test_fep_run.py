"""Discretisation through HeadTap, the fep pipeline and its CLI on tiny random models."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from headgame.cli import main
from headgame.fep.config import FepConfig
from headgame.data.texts import gsm8k_texts, pad_sequences, tokenize_texts
from headgame.measure.symbols import collect_symbols
from headgame.models.load import load_model

from tests.conftest import random_batch

GSM = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A box holds 12 eggs. How many eggs are in 5 boxes?", "answer": "12 * 5 = <<12*5=60>>60\n#### 60"},
    {"question": "Sara reads 20 pages a day for 6 days. How many pages?", "answer": "20 * 6 = <<20*6=120>>120\n#### 120"},
]


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(" ".join(f"The cat number {i} sat on mat {i % 7} and looked at bird {i % 5}." for i in range(400)))
    return p


@pytest.fixture
def gsm_file(tmp_path):
    p = tmp_path / "test.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in GSM) + "\n")
    return p


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_symbols_are_the_eager_argmax_without_padding(name):
    model, _, layout = load_model(name)
    ids, mask = random_batch(layout.n_heads, batch=3, seq=10, pad_last=4)
    sym = collect_symbols(model, layout, ids, mask, batch_size=2)
    assert sym.n_obs == int(mask.sum()) and sym.alphabet_size == 10
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    model.set_attn_implementation("sdpa")
    valid = mask.bool()
    for l in range(layout.n_layers):
        ref = att[l].argmax(-1).transpose(1, 2)[valid]  # [B, H, T] -> [B, T, H] -> [N, H]
        assert torch.equal(sym.x[l], ref)
    rel = collect_symbols(model, layout, ids, mask, alphabet="relative")
    for l in range(layout.n_layers):
        q = sym.pos.unsqueeze(-1)
        shift = 0 if layout.causal else 10 - 1
        assert torch.equal(rel.x[l], q - sym.x[l] + shift)
        assert int(rel.x[l].min()) >= 0
    if layout.causal:
        assert bool((sym.x[0] <= sym.pos.unsqueeze(-1)).all())  # a causal head never looks ahead


def test_gsm8k_texts_and_padding(gsm_file):
    texts = gsm8k_texts(gsm_file)
    assert texts[0] == "Question: " + GSM[0]["question"] + "\nAnswer: " + GSM[0]["answer"]
    assert gsm8k_texts(gsm_file, "answer")[1] == GSM[1]["answer"]
    _, tok, _ = load_model("tiny-llama")
    ids, cut = tokenize_texts(texts, tok, max_len=40, max_tokens=None)
    assert cut == 3 and all(len(x) == 40 for x in ids)
    seqs = pad_sequences([[1, 2, 3], [4, 5]], 0, source="x")
    assert seqs.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]] and seqs.n_tokens == 5


def test_run_fep_writes_everything(tmp_path, text_file):
    from headgame.fep.run import run_fep

    cfg = FepConfig(model="tiny-llama", data=str(text_file), max_tokens=512, seq_len=64, bootstrap=10,
                    mcmc_steps=300, mcmc_burn_in=50, ablation_tokens=64, out=str(tmp_path / "f"), table_format="csv")
    res = run_fep(cfg, progress=False)
    out = tmp_path / "f"
    for name in ("fep.json", "dividends.csv", "layer_summary.csv", "head_scores.csv", "report.html",
                 "dividends_hist.png", "triples_by_layer.png", "config.yaml"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "dividends.csv").open()))
    assert len(rows) == 2 * 15 and {r["order"] for r in rows} == {"1", "2", "3", "4"}
    assert all(float(r["value"]) >= -1e-12 for r in rows if r["order"] == "2")
    summary = list(csv.DictReader((out / "layer_summary.csv").open()))
    assert [r["layer"] for r in summary] == ["0", "1"] and all(0 <= float(r["frac_negative"]) <= 1 for r in summary)
    scores = list(csv.DictReader((out / "head_scores.csv").open()))
    assert set(scores[0]) >= {"layer", "head", "fep", "fep-exact", "shapley", "gibbs", "ablation"} and len(scores) == 8
    saved = json.loads((out / "fep.json").read_text())
    assert saved["data"]["n_observations"] == 512 and saved["epsilon_nash"]["n_pruned"] == 2
    assert "spearman_vs_ablation" in saved["epsilon_nash"]
    assert 'id="gt-fep"' in (out / "report.html").read_text()
    assert res["summary"]["n_layers"] == 2


def test_fep_parquet(tmp_path, text_file):
    pytest.importorskip("pyarrow")
    import pandas as pd

    from headgame.fep.run import run_fep

    cfg = FepConfig(model="tiny-gpt2", data=str(text_file), max_tokens=256, seq_len=64, bootstrap=0, mcmc_steps=0,
                    ablation_tokens=0, out=str(tmp_path / "p"), table_format="parquet")
    run_fep(cfg, progress=False, report=False)
    df = pd.read_parquet(tmp_path / "p" / "dividends.parquet")
    assert list(df.columns) == ["layer", "order", "heads", "value", "ci_low", "ci_high"] and len(df) == 30


def test_fep_cli_gsm8k_and_saturation_warning(tmp_path, gsm_file, capsys):
    code = main(["fep", "--model", "tiny-llama", "--data", "gsm8k", "--data-dir", str(gsm_file.parent.parent),
                 "--max-tokens", "64", "--seq-len", "64", "--bootstrap", "0", "--mcmc-steps", "0",
                 "--ablation-tokens", "0", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2  # the data dir has no gsm8k/test.jsonl: one-line error
    assert "gsm8k/test.jsonl" in capsys.readouterr().err
    (tmp_path / "d" / "gsm8k").mkdir(parents=True)
    (tmp_path / "d" / "gsm8k" / "test.jsonl").write_text(gsm_file.read_text())
    code = main(["fep", "--model", "tiny-llama", "--data", "auto", "--data-dir", str(tmp_path / "d"),
                 "--max-tokens", "100", "--seq-len", "64", "--bootstrap", "0", "--mcmc-steps", "0",
                 "--ablation-tokens", "0", "--out", str(tmp_path / "o"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = json.loads((tmp_path / "o" / "fep.json").read_text())
    assert res["data"]["source"] == "gsm8k" and res["data"]["n_sequences"] == 2  # problems cut at 64 bytes: two reach 100
    # 128 observations cannot support joint entropies of 3-tuples: warned, quoting log2(n)
    assert "warning:" in captured.err and "saturation level log2(n) =" in " ".join(captured.err.split())
    assert "triples < 0" in captured.out


@pytest.mark.parametrize("args, message", [
    (["--fraction", "1.5"], "outside (0, 1)"),
    (["--bootstrap", "-1"], "--bootstrap"),
    (["--layers", "9"], "out of range"),
    (["--mcmc-steps", "10", "--mcmc-burn-in", "20"], "--mcmc-burn-in"),
])
def test_fep_cli_errors(tmp_path, text_file, capsys, args, message):
    code = main(["fep", "--model", "tiny-llama", "--data", str(text_file), "--max-tokens", "128", "--seq-len", "64",
                 "--out", str(tmp_path / "e"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
