"""``headgame reproduce game-lora --preset tiny`` end to end on the tiny Llama and the fixture
slices of the eleven benchmarks: a complete report, every number traced to a stage file, and a
killed run continues without recomputing what finished."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import headgame
from headgame.errors import HeadgameError
from headgame.reproduce.presets import ABLATIONS, GAME_LORA, PAPER_TASKS

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
TINY = GAME_LORA["tiny"]


def reproduce(out: Path, **kw):
    return headgame.reproduce(paper="game-lora", preset="tiny", out=str(out), data_dir=str(FIX), device="cpu", **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro") / "T"
    return out, reproduce(out).data


def test_the_report_is_complete(finished):
    out, rep = finished
    for name in ("report.md", "report.html", "report.json", "config.yaml", "gamma_regression.png", "table1_deltas.png"):
        assert (out / name).stat().st_size > 0, name
    assert rep["missing"] == []
    t1 = rep["table1"]
    assert [r["task"] for r in t1["rows"]] == list(PAPER_TASKS) and t1["n_seeds"] == len(TINY.seeds)
    for r in t1["rows"]:
        assert len(r["base_seeds"]) == len(r["method_seeds"]) == len(TINY.seeds)
        assert r["n_items"] > 0 and 0 <= r["p"] <= 1
        lo, hi = r["delta_ci95"]
        assert not (math.isfinite(lo) and math.isfinite(hi)) or lo <= hi  # NaN: a base score of 0 in every resample
    assert set(rep["ablations"]) == set(TINY.ablations) and set(TINY.ablations) <= set(ABLATIONS)
    models = 1 + 2 * len(TINY.seeds) + len(TINY.ablations)
    pts = rep["gamma_regression"]["points"]
    assert len({p["model"] for p in pts}) == models and len(pts) == models + (models - 1) * TINY.checkpoints
    assert rep["gamma_regression"]["all_points"]["n"] == len(pts)
    assert set(rep["selective_coordination"]) == {f"{m}-seed{s}" for m in ("ce", "game-lora") for s in TINY.seeds}
    assert set(rep["selective_change"]) == {str(s) for s in TINY.seeds}
    assert set(rep["answers"]["tasks"]) >= set(PAPER_TASKS)
    assert all(c["stage_seconds"] > 0 for c in rep["cost"].values())
    md = (out / "report.md").read_text()
    for heading in ("Table 1", "Ablations", "Γ against hallucination", "Selective coordination", "PoA", "Answers", "Cost"):
        assert heading in md, heading


def test_every_number_comes_from_a_stage_file(finished):
    out, rep = finished
    for name, files in rep["sources"].items():
        for f in files:
            assert (out / f).is_file(), f
    # the table's per-seed scores are the eval.json scores of the models it names
    row = next(r for r in rep["table1"]["rows"] if r["task"] == "truthfulqa_mc1")
    for k, seed in enumerate(rep["table1_seeds"]):
        for method, col in (("ce", "base_seeds"), ("game-lora", "method_seeds")):
            ev = json.loads((out / "models" / f"{method}-seed{seed}" / "eval.json").read_text())
            assert row[col][k] == pytest.approx(ev["tasks"]["truthfulqa_mc1"]["score"])
    # Γ of each point is the design layer's Γ in that model's analysis.json
    p = next(p for p in rep["gamma_regression"]["points"] if p["model"] == "pretrained")
    an = json.loads((out / "models" / "pretrained" / "analysis.json").read_text())
    assert an["layers"][0]["layer"] == rep["design_layer"] and p["gamma"] == pytest.approx(an["layers"][0]["gamma"])
    assert not (out / ".work").exists() or not any((out / ".work").rglob("*.safetensors"))  # no weights left


def test_a_rerun_recomputes_nothing(finished, monkeypatch):
    out, rep = finished

    def boom(*a, **k):
        raise AssertionError("a finished stage was recomputed")

    for name in ("train", "evaluate", "analyze"):
        monkeypatch.setattr(headgame, name, boom)
    again = reproduce(out).data
    assert json.dumps(again["table1"]) == json.dumps(rep["table1"]) and again["finished"] == rep["finished"]  # NaN-safe


def test_a_killed_run_continues_where_it_stopped(tmp_path, monkeypatch):
    out = tmp_path / "K"
    real = {n: getattr(headgame, n) for n in ("train", "evaluate", "analyze")}
    calls = {n: 0 for n in real}

    def counting(name, die_at=None):
        def fn(*a, **k):
            calls[name] += 1
            if die_at is not None and calls[name] == die_at:
                raise KeyboardInterrupt
            return real[name](*a, **k)
        return fn

    # per trained model: its analysis, then its checkpoint's; the third is game-lora-seed42's own,
    # after its evaluation (two eval runs per model: the tasks, then WikiText-2)
    monkeypatch.setattr(headgame, "analyze", counting("analyze", die_at=3))
    with pytest.raises(KeyboardInterrupt):
        reproduce(out, stages="main")
    assert (out / "models" / "ce-seed42" / "stage.json").exists()
    assert not (out / "models" / "game-lora-seed42" / "stage.json").exists()
    assert (out / "models" / "game-lora-seed42" / "eval.json").exists()
    elsewhere = tmp_path / "clone"  # the committed small files alone, on another machine
    shutil.copytree(out, elsewhere, ignore=shutil.ignore_patterns(".work"))
    for n in calls:
        calls[n] = 0
        monkeypatch.setattr(headgame, n, counting(n))
    reproduce(out, stages="main")
    # ce-seed42 reused; game-lora-seed42 analysed, then its checkpoint evaluated and analysed; the
    # seed-43 models in full (train, 2 evals and an analysis for the model and for its checkpoint)
    assert calls == {"train": 2, "evaluate": 2 + 2 * 4, "analyze": 2 + 2 * 2}
    for n in calls:
        calls[n] = 0
    reproduce(elsewhere, stages="main")
    # without the work folder game-lora-seed42's adapter is gone: it is trained again (its finished
    # evaluation is kept), the rest as above
    assert calls == {"train": 3, "evaluate": 2 + 2 * 4, "analyze": 2 + 2 * 2}


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(HeadgameError, match="--preset 'fast'"):
        headgame.reproduce(paper="game-lora", preset="fast", out=str(tmp_path))
    with pytest.raises(HeadgameError, match="--stages ablation is not a stage of game-lora"):
        headgame.reproduce(paper="game-lora", preset="tiny", stages="main,ablation", out=str(tmp_path))
    with pytest.raises(HeadgameError, match="--models lists the models of gt-fep"):
        headgame.reproduce(paper="game-lora", preset="tiny", models="a,b", out=str(tmp_path))
