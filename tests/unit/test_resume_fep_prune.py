"""``headgame fep`` and ``headgame prune`` resume after a kill to the numbers of an uninterrupted run.

A run killed with SIGKILL (no handler runs) leaves its last atomic checkpoint; ``--resume`` must
continue from it and write the same result: every float of fep.json, and every number of
pruning.json but the timings (throughput is timed again), equal. In-process runs interrupted
right after each checkpoint cover every stage; a resume with other settings, or with nothing to
resume, is refused in one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headgame.cli import main

GSM = [
    {"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
     "answer": f"{i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2}\n#### {2 * i + 2}"}
    for i in range(12)
]
FEP_STATE, PRUNE_STATE = ".fep-state.safetensors", ".prune-state.safetensors"
# timed, so never equal between two runs: left out of the comparisons
TIMED = {"timing", "created", "throughput", "tokens_per_s", "measured_speedup", "throughput_gain", "gen_tokens_per_s", "gen_speedup"}


@pytest.fixture
def files(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"The cat number {i} sat on mat {i % 7} and looked at bird {i % 5}." for i in range(400)))
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps(r) for r in GSM) + "\n")
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(" = Cats = \n" + " ".join(f"The cat {i} sat on the mat and watched the bird {i % 3}." for i in range(200)))
    return corpus, gsm, wiki


def fep_args(corpus: Path) -> list[str]:
    return ["fep", "--model", "tiny-llama", "--data", str(corpus), "--max-tokens", "512", "--seq-len", "64", "--batch-size", "1",
            "--checkpoint-every", "1", "--bootstrap", "10", "--mcmc-steps", "300", "--mcmc-burn-in", "50", "--ablation-tokens", "64"]


def prune_args(gsm: Path, wiki: Path) -> list[str]:
    return ["prune", "--model", "tiny-llama", "--score-data", str(wiki), "--gsm8k-file", str(gsm), "--wikitext-file", str(wiki),
            "--score-tokens", "512", "--loss-tokens", "128", "--seq-len", "64", "--ppl-max-tokens", "256", "--ppl-max-len", "64",
            "--wikitext-window", "32", "--throughput-batch", "1", "--throughput-seq-len", "16", "--repeats", "5", "--warmup", "0",
            "--gen-prompt", "4", "--gen-new-tokens", "2", "--gen-repeats", "1", "--fraction", "0.25", "--compare-criteria",
            "--criteria", "fep,random,ablation", "--random-seeds", "2"]


def strip(obj, drop=frozenset(TIMED)):
    """The result without its timed fields and the paths of its folder (``out``, ``saved_model``)."""
    if isinstance(obj, dict):
        return {k: strip(v, drop) for k, v in obj.items() if k not in drop and k not in ("out", "saved_model")}
    if isinstance(obj, list):
        return [strip(v, drop) for v in obj]
    return obj


def same_json(a: Path, b: Path) -> None:
    # dumped, so NaN compares equal to NaN and 0.1 + 0.2 must be bit for bit the same float
    x, y = strip(json.loads(a.read_text())), strip(json.loads(b.read_text()))
    assert json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)


def cli(args: list[str], **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    argv = [sys.executable, "-m", "headgame.cli", *args, "--threads", "1", "--no-progress"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)


def kill_at_first_checkpoint(args: list[str], state: Path) -> None:
    argv = [sys.executable, "-m", "headgame.cli", *args, "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not state.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    err = proc.communicate()[1]
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed (rc {proc.returncode}): {err[-500:]}"
    assert state.exists()


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = [l for l in capsys.readouterr().err.strip().splitlines() if l.strip() and not l.startswith("note:")]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------ SIGKILL, then --resume (subprocesses)
def test_fep_killed_and_resumed_equals_uninterrupted(tmp_path, files):
    corpus, _, _ = files
    ref = cli([*fep_args(corpus), "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    cut = tmp_path / "cut"
    kill_at_first_checkpoint([*fep_args(corpus), "--out", str(cut)], cut / FEP_STATE)
    assert not (cut / "fep.json").exists()
    resumed = cli(["fep", "--resume", str(cut)])  # the run's settings come from its state
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at " in resumed.stderr  # the stage the kill reached
    assert not (cut / FEP_STATE).exists()
    same_json(tmp_path / "ref" / "fep.json", cut / "fep.json")
    for name in ("head_scores.csv", "dividends.csv", "layer_summary.csv"):
        assert (cut / name).read_text() == (tmp_path / "ref" / name).read_text(), name


def test_prune_killed_and_resumed_equals_uninterrupted(tmp_path, files):
    _, gsm, wiki = files
    ref = cli([*prune_args(gsm, wiki), "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    cut = tmp_path / "cut"
    kill_at_first_checkpoint([*prune_args(gsm, wiki), "--out", str(cut)], cut / PRUNE_STATE)
    assert not (cut / "pruning.json").exists()
    resumed = cli(["prune", "--resume", "--out", str(cut)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at " in resumed.stderr
    assert not (cut / PRUNE_STATE).exists()
    same_json(tmp_path / "ref" / "pruning.json", cut / "pruning.json")
    assert (cut / "head_scores.csv").read_text() == (tmp_path / "ref" / "head_scores.csv").read_text()
    assert json.loads((cut / "pruning.json").read_text())["timing"]["resumed_at"] in resumed.stderr


# ------------------------------------------------------------------ interrupted after each checkpoint (in process)
class Cut(Exception):
    """Stands for the kill: raised right after the n-th checkpoint is on disk."""


@pytest.fixture
def cut_after(monkeypatch):
    from headgame.fep import state

    def arm(n: int) -> None:
        saves = []
        real = state.StateFile.save

        def save(self, run):
            real(self, run)
            saves.append(1)
            if len(saves) == n:
                monkeypatch.setattr(state.StateFile, "save", real)
                raise Cut

        monkeypatch.setattr(state.StateFile, "save", save)

    return arm


def test_fep_resumes_from_every_stage(tmp_path, files, cut_after, capsys):
    import headgame
    from headgame.fep.config import FepConfig
    from headgame.fep.run import run_fep

    corpus, _, _ = files
    kw = dict(model="tiny-llama", data=str(corpus), max_tokens=256, seq_len=64, batch_size=2, checkpoint_every=1,
              bootstrap=10, mcmc_steps=200, mcmc_burn_in=20, ablation_tokens=64)
    run_fep(FepConfig(out=str(tmp_path / "ref"), **kw), progress=False, report=False)
    # 2 batches, 2 layers, 2 ablation layers: one checkpoint after each
    stages = ["discretise 1/2", "dividends 0/2", "dividends 1/2", "ablation 0/2", "ablation 1/2", "ablation 2/2"]
    for n, stage in enumerate(stages, 1):
        out = tmp_path / f"cut{n}"
        cut_after(n)
        with pytest.raises(Cut):
            run_fep(FepConfig(out=str(out), **kw), progress=False, report=False)
        if n == 3:  # the Python API takes the run folder
            res = headgame.fep(resume=str(out)).data
        else:
            res = run_fep(FepConfig(out=str(out), **kw), resume=True, progress=False, report=False)
        assert res["timing"]["resumed_at"] == stage and f"resuming at {stage}" in capsys.readouterr().err
        same_json(tmp_path / "ref" / "fep.json", out / "fep.json")
        assert (out / "dividends.csv").read_text() == (tmp_path / "ref" / "dividends.csv").read_text()
        assert not (out / FEP_STATE).exists()


def test_prune_resumes_from_every_stage(tmp_path, files, cut_after, capsys):
    from headgame.prune.config import PruneConfig
    from headgame.prune.run import run_prune

    _, gsm, wiki = files
    kw = dict(model="tiny-llama", score_data=str(wiki), gsm8k_file=str(gsm), wikitext_file=str(wiki), score_tokens=256,
              loss_tokens=64, seq_len=64, ppl_max_tokens=128, ppl_max_len=64, wikitext_window=32, throughput_batch=1,
              throughput_seq_len=8, repeats=5, warmup=0, generation=False, save_model=False, fraction=0.25,
              compare_criteria=True, criteria="fep,ablation,random", random_seeds=1)
    run_prune(PruneConfig(out=str(tmp_path / "ref"), **kw), progress=False)
    # 3 criteria, 2 sets x 4 models, 4 FLOPs counts
    for n, stage in [(1, "scoring 1/3"), (3, "perplexity 0/8"), (6, "perplexity 3/8"), (12, "FLOPs 1/4"), (15, "throughput 0/1")]:
        out = tmp_path / f"cut{n}"
        cut_after(n)
        with pytest.raises(Cut):
            run_prune(PruneConfig(out=str(out), **kw), progress=False)
        res = run_prune(PruneConfig(out=str(out), **kw), resume=True, progress=False)
        assert res["timing"]["resumed_at"] == stage and f"resuming at {stage}" in capsys.readouterr().err
        same_json(tmp_path / "ref" / "pruning.json", out / "pruning.json")
        assert (out / "head_scores.csv").read_text() == (tmp_path / "ref" / "head_scores.csv").read_text()
        assert not (out / PRUNE_STATE).exists()


# ------------------------------------------------------------------ refusals
def test_resume_with_other_settings_or_nothing_to_resume_is_refused(tmp_path, files, cut_after, capsys):
    from headgame.fep.config import FepConfig
    from headgame.fep.run import run_fep
    from headgame.prune.config import PruneConfig
    from headgame.prune.run import run_prune

    corpus, gsm, wiki = files
    fep_out, prune_out = tmp_path / "f", tmp_path / "p"
    cut_after(1)
    with pytest.raises(Cut):
        run_fep(FepConfig(model="tiny-llama", data=str(corpus), max_tokens=256, seq_len=64, bootstrap=0, mcmc_steps=0,
                          ablation_tokens=0, out=str(fep_out)), progress=False, report=False)
    msg = one_line_error(capsys, ["fep", "--resume", str(fep_out), "--seq-len", "32", "--no-progress"])
    assert "seq_len" in msg and "different settings" in msg
    cut_after(1)
    with pytest.raises(Cut):
        run_prune(PruneConfig(model="tiny-llama", score_data=str(wiki), ppl_sets="none", score_tokens=256, seq_len=64,
                              throughput_batch=1, throughput_seq_len=8, generation=False, save_model=False, fraction=0.25,
                              out=str(prune_out)), progress=False)
    msg = one_line_error(capsys, ["prune", "--resume", str(prune_out), "--fraction", "0.5", "--no-progress"])
    assert "fraction" in msg and "different settings" in msg
    assert (fep_out / FEP_STATE).exists() and (prune_out / PRUNE_STATE).exists()  # a refusal keeps the state
    for command in ("fep", "prune"):
        msg = one_line_error(capsys, [command, "--resume", str(tmp_path / f"empty-{command}"), "--no-progress"])
        assert "nothing to resume" in msg


def test_ctrl_c_names_resume_only_where_the_command_has_it(tmp_path, monkeypatch, capsys):
    import headgame.evaluate.runner as eval_runner
    import headgame.fep.run as fep_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fep_run, "run_fep", interrupted)
    assert main(["fep", "--model", "tiny-llama", "--out", str(tmp_path / "f"), "--no-progress"]) == 130
    assert "headgame fep --resume" in capsys.readouterr().err
    monkeypatch.setattr(eval_runner, "run_eval", interrupted)
    assert main(["eval", "--model", "tiny-llama", "--out", str(tmp_path / "e")]) == 130
    err = capsys.readouterr().err
    assert "--resume" not in err and "cannot resume" in err


def test_a_state_holding_one_array_twice_saves_and_loads(tmp_path):
    import numpy as np

    from headgame.io import load_state, save_state

    scores = np.arange(6, dtype=np.float64).reshape(2, 3)
    save_state(tmp_path / "s.safetensors", {"variant": scores, "cache": {"fep": scores, "view": scores[1]}})
    back = load_state(tmp_path / "s.safetensors")
    assert back["variant"].numpy().tolist() == back["cache"]["fep"].numpy().tolist() == scores.tolist()
    assert back["cache"]["view"].numpy().tolist() == [3.0, 4.0, 5.0]
