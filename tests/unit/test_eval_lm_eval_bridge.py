"""headgame and lm-evaluation-harness score the same items alike (tiny model, fixture slices).

Skipped when the optional ``lm-eval`` extra is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from headgame.evaluate.config import EvalConfig
from headgame.evaluate.lm_eval_bridge import BRIDGED, build_tasks, item_outcome, loglikelihoods, run_lm_eval
from headgame.evaluate.runner import build_scorer, load_for_eval, run_tasks

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval extra not installed (pip install lm-eval==0.4.13)")

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


def test_same_items_same_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = EvalConfig(model="tiny-llama", tasks=",".join(BRIDGED), data_dir=str(FIX))
    model, tok, info = load_for_eval(cfg)
    scorer = build_scorer(cfg, model, tok, info, [])
    ours = run_tasks(cfg, scorer)["tasks"]
    theirs = run_lm_eval(model, tok, build_tasks(list(BRIDGED), data_dir=str(FIX), work=tmp_path, limit=None),
                         max_length=scorer.cfg.max_length)
    for name in BRIDGED:
        assert ours[name]["score"] == pytest.approx(theirs[name]["score"], abs=1e-4), name
        for item in ours[name]["items"]:
            sample = theirs[name]["items"][item["id"]]
            assert item["num"] == pytest.approx(item_outcome(name, sample), rel=1e-4, abs=1e-4), name
            if "lls" in item:
                assert item["lls"] == pytest.approx(loglikelihoods(sample), abs=1e-3), name
            if name == "nq_open":
                assert item["pred"].lstrip() == sample["filtered_resps"][0]
