"""analyze / eval / fep under ``torchrun`` (two gloo processes) give the JSON of one process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import SHORT_TEXT

CORPUS_TEXT = SHORT_TEXT
IGNORED = {"timing", "created", "versions", "headgame_version", "started", "seconds", "out"}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


def _launch(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "headgame.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "headgame.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _same(a, b, where: str = "") -> None:
    """Equal structure and strings, floats within 1e-9 (summation order moves the last bits)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) - IGNORED == set(b) - IGNORED, where
        for k in set(a) - IGNORED:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert isinstance(b, (int, float)), where
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9, (where, a, b)
    else:
        assert a == b, (where, a, b)


def _both(tmp_path: Path, args: list[str], name: str) -> tuple[dict, dict, Path]:
    one, two = tmp_path / "one", tmp_path / "two"
    _launch([*args, "--out", str(one)], 1)
    proc = _launch([*args, "--out", str(two)], 2)
    assert not (two / ".headgame.lock").exists()
    return json.loads((one / name).read_text()), json.loads((two / name).read_text()), proc


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])  # tiny-bert: masked-LM draws of the skipped batches
def test_analyze_two_processes_equal_one(tmp_path, corpus, model):
    # 10 blocks in batches of 2: 5 batches, shards of 3 and 2
    args = ["analyze", "--model", model, "--data", str(corpus), "--max-tokens", "320", "--seq-len", "32",
            "--batch-size", "2", "--no-progress", "--threads", "1", "--checkpoint-every", "1"]
    a, b, proc = _both(tmp_path, args, "analysis.json")
    assert a["data"]["n_blocks"] >= 4 and a["layers"][0]["n_tokens"] == b["layers"][0]["n_tokens"] > 0
    assert "redundancy" in a["layers"][0]
    _same(a, b)
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    assert (tmp_path / "two" / "report.html").exists() and not (tmp_path / "two" / ".analyze-state.safetensors").exists()


@pytest.mark.parametrize("decoding, tasks", [("greedy", "all"), ("actdec", "memotrap,wikitext,nq_open")])
def test_eval_two_processes_equal_one(tmp_path, decoding, tasks):
    # log-likelihood, rolling and generation requests, each split over two processes (actdec: prefix sharpness too)
    args = ["eval", "--model", "tiny-llama", "--tasks", tasks, "--decoding", decoding, "--data-dir", str(FIXTURES),
            "--no-progress", "--threads", "1"]
    a, b, proc = _both(tmp_path, args, "eval.json")
    assert len(a["tasks"]) == (12 if tasks == "all" else 3) and set(a["timing"]) == {"loglikelihood", "rolling", "generate"}
    for name, task in a["tasks"].items():  # identical per-item outcomes, in item order
        assert [it["id"] for it in task["items"]] == [it["id"] for it in b["tasks"][name]["items"]], name
    _same(a, b)
    assert a["engine"] == b["engine"]
    assert proc.stdout.count("wrote ") == 1


def test_fep_two_processes_equal_one(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(" ".join(f"The cat number {i} sat on mat {i % 7} and looked at bird {i % 5}." for i in range(400)))
    # 8 sequences in batches of 2, 2 layers, 8 heads ablated: every stage is split over the two processes
    args = ["fep", "--model", "tiny-llama", "--data", str(text), "--max-tokens", "512", "--seq-len", "64", "--batch-size", "2",
            "--bootstrap", "10", "--mcmc-steps", "300", "--mcmc-burn-in", "50", "--ablation-tokens", "64",
            "--table-format", "csv", "--no-progress", "--threads", "1"]
    a, b, proc = _both(tmp_path, args, "fep.json")
    assert a["data"]["n_observations"] == 512 and "spearman_vs_ablation" in a["epsilon_nash"]
    _same(a, b)
    rows = [[r.split(",") for r in (tmp_path / d / "head_scores.csv").read_text().splitlines()] for d in ("one", "two")]
    assert rows[0][0] == rows[1][0] and len(rows[0]) == len(rows[1]) == 9
    for r1, r2 in zip(rows[0][1:], rows[1][1:]):
        _same([float(x) for x in r1], [float(x) for x in r2])
    assert proc.stdout.count("wrote ") == 1 and not (tmp_path / "two" / ".fep-state.safetensors").exists()


def test_shard_blocks_cover_in_order():
    from headgame.dist import all_gather, merge_indexed, shard, world

    for n in range(0, 12):
        for w in range(1, 5):
            blocks = [shard(n, r, w) for r in range(w)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert world() == (0, 1) and all_gather({"a": 1}) == [{"a": 1}] and merge_indexed({3: "x"}) == {3: "x"}


def test_resume_needs_one_process(tmp_path, corpus):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "headgame.cli",
           "analyze", "--model", "tiny-llama", "--data", str(corpus), "--resume", str(tmp_path / "A"), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode != 0 and "--resume continues a run of one process" in proc.stderr
    assert not (tmp_path / "A").exists()
