"""``headgame prune`` end to end on tiny models, its outputs and its one-line errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from headgame.cli import main
from headgame.models.surgery import load_pruned

GSM = [
    {"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
     "answer": f"{i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2}\n#### {2 * i + 2}"}
    for i in range(12)
]
FAST = ["--score-tokens", "512", "--loss-tokens", "128", "--seq-len", "64", "--ppl-max-tokens", "256",
        "--ppl-max-len", "64", "--wikitext-window", "32", "--throughput-batch", "1", "--throughput-seq-len", "16",
        "--repeats", "5", "--warmup", "0", "--gen-prompt", "4", "--gen-new-tokens", "2", "--gen-repeats", "1",
        "--no-progress"]


@pytest.fixture
def files(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps(r) for r in GSM) + "\n")
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(" = Cats = \n" + " ".join(f"The cat {i} sat on the mat and watched the bird {i % 3}." for i in range(200)))
    return gsm, wiki


def run(tmp_path, files, *extra, model="tiny-llama"):
    gsm, wiki = files
    out = tmp_path / "p"
    code = main(["prune", "--model", model, "--score-data", str(wiki), "--gsm8k-file", str(gsm),
                 "--wikitext-file", str(wiki), "--out", str(out), *FAST, *extra])
    return code, out


def test_prune_fep_compare_criteria(tmp_path, files, capsys):
    code, out = run(tmp_path, files, "--criterion", "fep", "--fraction", "0.25", "--compare-criteria",
                    "--criteria", "fep,random,ablation,michel,attention-entropy", "--random-seeds", "3")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = json.loads((out / "pruning.json").read_text())
    assert res["primary"] == "fep" and res["budget"]["n_pruned"] == 2
    assert set(res["results"]) == {"fep", "random", "ablation", "michel", "attention-entropy"}
    fep = res["results"]["fep"]
    assert fep["n_pruned"] == 2 and sum(fep["heads_per_layer"]) == 6
    assert fep["flops"]["analytic"]["reduction_total"] > 0
    assert fep["flops"]["measured"]["total"] == fep["flops"]["analytic"]["total"]
    fw = fep["throughput"]["forward"]
    assert fw["flop_implied_speedup"] > 1 and fw["measured_speedup"] > 0 and len(fw["times_s"]) == 5
    assert fep["throughput"]["generation"]["new_tokens"] == 2
    for name in ("gsm8k", "wikitext2"):
        p = fep["perplexity"][name]
        assert p["available"] and p["ppl"] > 1 and p["change_rel"] == pytest.approx(p["ppl"] / res["base"]["perplexity"][name]["ppl"] - 1)
    assert "epsilon_bits" in fep["epsilon_nash"] and "rho" in fep["spearman_vs_ablation"]
    rnd = res["results"]["random"]
    seed = res["config"]["seed"]  # the default seed, whatever it is
    assert rnd["seeds"] == [seed, seed + 1, seed + 2] and len(rnd["runs"]) == 3
    assert rnd["summary"]["ppl_gsm8k"]["n"] == 3 and rnd["summary"]["ppl_gsm8k"]["sd"] >= 0
    assert "random (mean ± sd, 3 seeds)" in (out / "pruning_table.md").read_text()
    assert (out / "head_scores.csv").read_text().splitlines()[0].startswith("layer,head,fep,random,ablation")
    # the saved model reloads and is the fep-pruned one
    loaded = load_pruned(out / "model")
    assert loaded.info["pruning"]["removed_heads"] == fep["pruned_heads"]
    assert "unpruned" in captured.out
    # the terminal table fits 80 columns without cutting a cell
    from rich.console import Console

    from headgame.prune.command import print_table

    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    print_table(res, console)
    text = console.export_text()
    assert "…" not in text and "random (mean)" in text and max(len(l) for l in text.splitlines()) <= 80


def test_prune_bert_per_layer(tmp_path, files):
    code, out = run(tmp_path, files, "--criterion", "random", "--fraction", "0.25", "--per-layer", "--random-seeds", "2",
                    "--pseudo-ppl-seeds", "2", "--ppl-sets", "wikitext2", "--no-save-model", model="tiny-bert")
    assert code == 0
    res = json.loads((out / "pruning.json").read_text())
    run0 = res["results"]["random"]["runs"][0]
    assert run0["heads_per_layer"] == [3, 3]  # one head from each layer
    assert run0["perplexity"]["wikitext2"]["kind"].startswith("pseudo-perplexity")
    assert "generation" not in run0["throughput"] and "encoder" in res["notes"]["generation"]
    assert not (out / "model").exists()


def test_missing_default_data_is_a_note(tmp_path, files, capsys, monkeypatch):
    monkeypatch.setenv("HEADGAME_DATA_DIR", str(tmp_path))
    gsm, wiki = files
    code = main(["prune", "--model", "tiny-gpt2", "--criterion", "attention-entropy", "--score-data", str(wiki),
                 "--out", str(tmp_path / "q"), "--no-generation", "--no-save-model", *FAST])
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "q" / "pruning.json").read_text())
    assert res["data"]["perplexity_sets"] == [] and "skipped" in res["notes"]["perplexity_gsm8k"]


@pytest.mark.parametrize("args, message", [
    (["--fraction", "1.2"], "outside (0, 1)"),
    (["--fraction", "0"], "outside (0, 1)"),
    (["--criterion", "magic"], "unknown criterion 'magic'"),
    (["--per-layer", "--fraction", "0.9"], "would prune all 4 heads of layer 0"),
    (["--fraction", "0.9"], "emptying a layer"),
    (["--compare-criteria", "--criteria", "fep,nope"], "unknown criterion 'nope'"),
    (["--repeats", "3"], "at least 5"),
    (["--ppl-sets", "ptb"], "--ppl-sets"),
])
def test_prune_errors(tmp_path, files, capsys, args, message):
    code, _ = run(tmp_path, files, *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_prune_gtfep_authors_runs(tmp_path, files, capsys):
    import math

    code, out = run(tmp_path, files, "--criterion", "gtfep-authors", "--fraction", "0.25", "--per-layer")
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "pruning.json").read_text())
    r = res["results"]["gtfep-authors"]
    assert r["n_pruned"] == 2 and all(k == 1 for k in [4 - h for h in r["heads_per_layer"]])
    rows = (out / "head_scores.csv").read_text().splitlines()
    assert rows[0] == "layer,head,gtfep-authors"
    scores = np.array([float(line.split(",")[2]) for line in rows[1:]])
    # nats: 0 ≤ H(i) ≤ ln E and 0 ≤ MI ≤ H for E ≤ score_tokens sequences, so s_i ≤ ln E · (1 + (H − 1)/2)
    n_heads = 4
    assert len(scores) == 2 * n_heads and np.isfinite(scores).all() and (scores >= 0).all()
    assert (scores <= math.log(res["data"]["score_tokens"]) * (1 + (n_heads - 1) / 2) + 1e-9).all()
