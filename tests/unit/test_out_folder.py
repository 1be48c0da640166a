"""The output folder is a run's home: one run at a time (a lock, stale after kill -9), one
command per folder, a fresh run clears its command's old artefacts (never the user's files),
and --resume needs something to resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from headgame.errors import HeadgameError
from headgame.outdir import LOCK_FILE, MARKER_FILE, RunFolder, matching
from tests.conftest import run_cli


def analyze(corpus, out, *extra):
    return ["analyze", "--model", "tiny-llama", "--data", str(corpus), "--max-tokens", "256", "--seq-len", "32",
            "--batch-size", "2", "--out", str(out), "--no-progress", *extra]


def train(corpus, out, *extra):
    return ["train", "--model", "tiny-llama", "--data", str(corpus), "--max-tokens", "1024", "--seq-len", "32",
            "--batch-size", "4", "--val-every", "0", "--out", str(out), "--no-progress", *extra]


def one_error_line(code, err) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------ the lock
def test_a_second_run_on_a_held_folder_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "o"
    with RunFolder(out, command="train"):
        code, _, err = run_cli(analyze(corpus, out), capsys)
        line = one_error_line(code, err)
        assert line == (f"error: output folder {out} is in use by headgame train (pid {os.getpid()}); "
                        "wait for it to finish or choose another --out")
        assert not (out / "analysis.json").exists()
    assert not (out / LOCK_FILE).exists()  # released on exit
    assert run_cli(analyze(corpus, out), capsys)[0] == 0  # free now, and that claim left no train artefact behind


def test_the_lock_is_released_when_a_run_fails(tmp_path, corpus, capsys):
    out = tmp_path / "o"
    code, _, err = run_cli(["analyze", "--model", "./nowhere/model", "--data", str(corpus), "--out", str(out), "--no-progress"], capsys)
    assert "not found" in one_error_line(code, err)
    assert not (out / LOCK_FILE).exists()
    code, _, err = run_cli(analyze(corpus, out), capsys)
    assert code == 0, err


def _holder(out: Path, command: str) -> subprocess.Popen:
    script = ("import sys, time\nfrom headgame.outdir import RunFolder\n"
              f"RunFolder(sys.argv[1], command={command!r}).acquire()\nprint('held', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_held_by_another_process_then_left_by_kill_9_is_taken_over(tmp_path, corpus, capsys):
    out = tmp_path / "o"
    proc = _holder(out, "analyze")
    try:
        code, _, err = run_cli(analyze(corpus, out), capsys)
        assert f"is in use by headgame analyze (pid {proc.pid})" in one_error_line(code, err)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / LOCK_FILE).exists()  # left behind by the killed process
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == proc.pid
    code, _, err = run_cli(analyze(corpus, out), capsys)
    assert code == 0, err
    assert f"took over the lock of headgame analyze (pid {proc.pid})" in err
    assert (out / "analysis.json").exists() and not (out / LOCK_FILE).exists()


def test_the_lock_is_released_on_keyboard_interrupt_and_resume_reports_progress(tmp_path, corpus, capsys):
    from headgame.analyze.config import AnalyzeConfig
    from headgame.analyze.run import run_analysis

    out = tmp_path / "cut"
    cfg = AnalyzeConfig(model="tiny-llama", data=str(corpus), max_tokens=256, seq_len=32, batch_size=2,
                        checkpoint_every=1, out=str(out))

    def crash(i):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_analysis(cfg, progress=False, report=False, on_batch=crash)
    assert not (out / LOCK_FILE).exists() and (out / ".analyze-state.safetensors").exists()
    code, _, err = run_cli(analyze(corpus, out, "--checkpoint-every", "1", "--resume"), capsys)
    assert code == 0, err
    assert re.search(r"^resuming at batch 3/4$", err, re.M), err
    timing = json.loads((out / "analysis.json").read_text())["timing"]
    assert isinstance(timing["tokens_per_s"], float) and timing["tokens_per_s"] > 0 and timing["resumed_at_batch"] == 3


# ------------------------------------------------------------------ one command per folder
def test_analyze_into_a_train_folder_is_refused_and_a_fresh_train_clears_the_old_run(tmp_path, corpus, capsys):
    out = tmp_path / "T"
    code, _, err = run_cli(train(corpus, out, "--checkpoint-every", "2"), capsys)
    assert code == 0, err
    old_checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert old_checkpoints
    (out / "my-notes.txt").write_text("mine")
    before = (out / "config.yaml").read_bytes()

    code, _, err = run_cli(analyze(corpus, out), capsys)
    assert one_error_line(code, err) == (f"error: {out} holds a headgame train run; analyze would overwrite its "
                                         "config.yaml; choose another --out")
    assert (out / "config.yaml").read_bytes() == before and not (out / "analysis.json").exists()

    from headgame.train.loop import ARTEFACTS

    assert matching(out, ["*"]) == sorted([*matching(out, ARTEFACTS), "my-notes.txt"])  # train declares all it writes

    code, _, err = run_cli(["train", "--resume", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert re.search(r"^resuming at step \d+/\d+$", err, re.M) and "cleared" not in err, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == old_checkpoints  # resume clears nothing

    code, _, err = run_cli(train(corpus, out, "--seed", "5"), capsys)  # fresh: no --resume, no checkpoints asked
    assert code == 0, err
    assert re.search(rf"^note: cleared the previous train run in {re.escape(str(out))} \(\d+ files\)$", err, re.M), err
    assert not (out / "checkpoints").exists()
    assert (out / "my-notes.txt").read_text() == "mine"
    assert "seed: 5" in (out / "config.yaml").read_text()


def test_fresh_analyze_rerun_removes_the_old_redundancy_figure_and_keeps_user_files(tmp_path, corpus, capsys):
    out = tmp_path / "A"
    (tmp_path / "A").mkdir()
    (out / "data.csv").write_text("user,file\n")
    (out / "figure.png").write_bytes(b"not ours")
    assert run_cli(analyze(corpus, out), capsys)[0] == 0
    assert (out / "redundancy_by_layer.png").exists()

    from headgame.analyze.run import ARTEFACTS

    assert matching(out, ["*"]) == sorted([*matching(out, ARTEFACTS), "data.csv", "figure.png"])
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["command"] == "analyze" and marker["identity"].startswith("sha256:") and marker["headgame_version"]

    code, _, err = run_cli(analyze(corpus, out, "--no-redundancy"), capsys)
    assert code == 0, err
    assert f"note: cleared the previous analyze run in {out} (" in err
    assert not (out / "redundancy_by_layer.png").exists() and (out / "report.html").exists()
    assert (out / "data.csv").read_text() == "user,file\n" and (out / "figure.png").read_bytes() == b"not ours"


def test_resume_with_nothing_to_resume_is_refused(tmp_path, corpus, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "user.txt").write_text("x")
    code, _, err = run_cli(analyze(corpus, empty, "--resume"), capsys)
    assert one_error_line(code, err) == f"error: nothing to resume in {empty} (no checkpoint); drop --resume to start a new run"
    code, _, err = run_cli(["train", "--resume", str(empty), "--no-progress"], capsys)
    assert one_error_line(code, err) == f"error: nothing to resume in {empty} (no checkpoint); drop --resume to start a new run"
    assert sorted(p.name for p in empty.iterdir()) == ["user.txt"]


# ------------------------------------------------------------------ the rules, without a model
def test_guests_write_beside_their_host_without_taking_the_folder(tmp_path):
    out = tmp_path / "E"
    with RunFolder(out, command="eval", artefacts=("eval.json", "config.yaml")):
        (out / "eval.json").write_text("{}")
    with RunFolder(out, command="eval --compare", artefacts=("compare.json",), accepts=("eval",)):
        (out / "compare.json").write_text("{}")
    assert json.loads((out / MARKER_FILE).read_text())["command"] == "eval"
    with RunFolder(out, command="eval", artefacts=("eval.json", "config.yaml")):  # fresh eval: its own files only
        assert not (out / "eval.json").exists() and (out / "compare.json").exists()
        (out / "eval.json").write_text("{}")
    with pytest.raises(HeadgameError, match=r"holds a headgame eval run; fep would mix its files into it"):
        RunFolder(out, command="fep", artefacts=("fep.json",)).acquire()
    with pytest.raises(HeadgameError, match=r"holds a headgame eval run; fep would overwrite its eval.json"):
        RunFolder(out, command="fep", artefacts=("fep.json", "eval.json")).acquire()
    assert not (out / LOCK_FILE).exists()


def test_an_abandoned_claim_and_an_unmarked_old_run(tmp_path):
    out = tmp_path / "o"
    RunFolder(out, command="train", artefacts=("metrics.jsonl",)).acquire().release()  # claimed, nothing written
    with RunFolder(out, command="analyze", artefacts=("analysis.json",)):
        pass
    assert json.loads((out / MARKER_FILE).read_text())["command"] == "analyze"
    legacy = tmp_path / "legacy"  # written before markers: its main result names the command
    legacy.mkdir()
    for name in ("analysis.json", "report.html", "keep.txt"):
        (legacy / name).write_text("x")
    with RunFolder(legacy, command="analyze", artefacts=("analysis.json", "report.html")):
        assert sorted(p.name for p in legacy.iterdir() if not p.name.startswith(".")) == ["keep.txt"]
    with pytest.raises(HeadgameError, match="nothing to resume in"):  # nothing left: the lock is let go
        RunFolder(legacy, command="analyze", artefacts=("analysis.json",), resume=True, state=("analysis.json",)).acquire()
    assert not (legacy / LOCK_FILE).exists() and (legacy / "keep.txt").exists()


@pytest.mark.parametrize("module, name", [("headgame.analyze.run", "run_analysis"), ("headgame.evaluate.runner", "run_eval"),
                                          ("headgame.fep.run", "run_fep"), ("headgame.prune.run", "run_prune")])
def test_every_runner_claims_its_folder(module, name):
    import importlib

    runner = getattr(importlib.import_module(module), name)
    assert runner.artefacts == importlib.import_module(module).ARTEFACTS  # set by claims_out (analyze: on its _analyze)


def test_report_and_compare_write_beside_an_analyze_run_but_wait_for_its_lock(tmp_path, corpus, capsys):
    out = tmp_path / "A"
    assert run_cli(analyze(corpus, out), capsys)[0] == 0
    analysis = str(out / "analysis.json")
    code, _, err = run_cli(["report", analysis], capsys)  # --out defaults to the analysis' folder
    assert code == 0, err
    code, _, err = run_cli(["analyze", "--compare", analysis, analysis, "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "compare.json").exists() and json.loads((out / MARKER_FILE).read_text())["command"] == "analyze"
    with RunFolder(out, command="analyze", resume=True):  # as a resumed analyze holds it
        code, _, err = run_cli(["report", analysis], capsys)
        assert f"is in use by headgame analyze (pid {os.getpid()})" in one_error_line(code, err)
    code, _, err = run_cli(train(corpus, out), capsys)
    assert "holds a headgame analyze run; train would overwrite its config.yaml" in one_error_line(code, err)


def test_without_flock_the_pid_decides(tmp_path, monkeypatch):
    import socket

    import headgame.outdir as outdir

    monkeypatch.setattr(outdir, "fcntl", None)
    out = tmp_path / "o"
    with RunFolder(out, command="fep"):
        with pytest.raises(HeadgameError, match=rf"in use by headgame fep \(pid {os.getpid()}\)"):
            RunFolder(out, command="fep").acquire()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "command": "prune"}))
    with RunFolder(out, command="fep") as folder:
        assert folder.held and json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()
