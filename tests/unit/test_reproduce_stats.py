"""The reproduction's statistics and stage store, against values worked out by hand or by numpy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from headgame.errors import HeadgameError
from headgame.reproduce.stages import StageStore, stage_key
from headgame.reproduce.tables import answer_shares, halluc_error, regression, seed_table


def ev(outcomes: dict[str, list[float]], binary=True, group="halluc") -> dict:
    return {"tasks": {name: {"score": float(np.mean(v)), "binary": binary, "group": group, "label": name.upper(),
                             "higher_is_better": True, "items": [{"id": i, "num": x, "den": 1} for i, x in enumerate(v)]}
                      for name, v in outcomes.items()}}


def test_seed_table_means_deltas_and_pooled_mcnemar_by_hand():
    base = [ev({"a": [1, 0, 0, 1, 0, 0, 1, 0]}), ev({"a": [1, 1, 0, 0, 0, 0, 1, 0]})]  # 3/8, 3/8
    meth = [ev({"a": [1, 1, 1, 1, 0, 0, 1, 0]}), ev({"a": [1, 1, 1, 0, 1, 0, 1, 0]})]  # 5/8, 5/8
    t = seed_table(base, meth, resamples=2000, seed=1)
    row = t["rows"][0]
    assert row["base_mean"] == pytest.approx(0.375) and row["method_mean"] == pytest.approx(0.625)
    assert row["base_sd"] == pytest.approx(0.0) and row["delta"] == pytest.approx((0.625 - 0.375) / 0.375 * 100)
    # pooled pairs: seed 1 has base-wrong/method-right at items 1, 2; seed 2 at items 2, 4; no b
    assert row["test"] == "McNemar (b=0, c=4)" and row["p"] == pytest.approx(sps.binomtest(0, 4, 0.5).pvalue)
    lo, hi = row["delta_ci95"]
    assert lo <= row["delta"] <= hi and row["n_items"] == 8 and row["n_pairs"] == 16
    agg = t["aggregates"]["halluc"]
    assert agg["delta"] == pytest.approx(row["delta"]) and agg["n_tasks"] == 1
    assert math.isnan(t["aggregates"]["knowledge"]["delta"])


def test_seed_sd_is_the_sample_sd_and_the_aggregate_the_mean_of_tasks():
    base = [ev({"a": [1, 0, 1, 0], "b": [1, 1, 0, 0]}), ev({"a": [1, 1, 1, 0], "b": [1, 0, 0, 0]})]
    meth = [ev({"a": [1, 1, 1, 1], "b": [1, 1, 1, 0]}), ev({"a": [1, 1, 1, 1], "b": [0, 1, 0, 0]})]
    t = seed_table(base, meth, resamples=500)
    a, b = t["rows"]
    assert a["base_sd"] == pytest.approx(np.std([0.5, 0.75], ddof=1))
    assert b["method_mean"] == pytest.approx(np.mean([0.75, 0.25]))
    assert t["aggregates"]["halluc"]["delta"] == pytest.approx((a["delta"] + b["delta"]) / 2)


def test_seed_table_needs_paired_runs():
    with pytest.raises(ValueError, match="same number"):
        seed_table([ev({"a": [1]})], [])


def test_regression_matches_numpy_and_the_t_test():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = 0.7 * x + rng.normal(scale=0.5, size=12)
    fit = regression(x, y)
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    r2 = 1 - resid @ resid / ((y - y.mean()) @ (y - y.mean()))
    se = math.sqrt(resid @ resid / 10 / ((x - x.mean()) @ (x - x.mean())))
    p = 2 * sps.t.sf(abs(b / se), 10)
    assert fit["slope"] == pytest.approx(b) and fit["intercept"] == pytest.approx(a)
    assert fit["r2"] == pytest.approx(r2) and fit["p"] == pytest.approx(p) and fit["n"] == 12
    assert math.isnan(regression([1, 1, 1], [1, 2, 3])["slope"])


def test_halluc_error_and_answer_shares():
    assert halluc_error({"a": 0.25, "b": 0.75, "c": 0.1}, ("a", "b")) == pytest.approx(0.5)
    data = {"tasks": {"halueval_qa": {"items": [{"id": i, "num": 1, "den": 1, "verdict": v, "gold": g}
                                                for i, (v, g) in enumerate(zip(["No"] * 19 + ["Yes"], ["No"] * 12 + ["Yes"] * 8))]},
                      # likelihood of whole answers: the gold index is a file position (always 0 in TruthfulQA)
                      "truthfulqa_mc1": {"items": [{"id": i, "num": 0, "den": 1, "pred": i % 3, "gold": 0} for i in range(9)]}}}
    shares = answer_shares(data)
    a = shares["halueval_qa"]
    assert a["top_answer"] == "no" and a["top_share"] == pytest.approx(0.95) and a["dominated"]
    assert a["majority_label"] == "No" and a["majority_baseline"] == pytest.approx(0.6)
    t = shares["truthfulqa_mc1"]
    assert "majority_baseline" not in t and t["top_share"] == pytest.approx(1 / 3) and not t["dominated"]


def test_stage_store_reuses_reruns_on_new_settings_and_trusts_only_its_own_partial_files(tmp_path):
    store = StageStore(tmp_path, say=lambda m: None)
    calls = []

    def fn(folder, work):
        calls.append(1)
        (folder / "small.json").write_text("{}")
        (work / "big.bin").write_bytes(b"x")
        return {"value": len(calls)}

    assert store.run("models/a", {"x": 1}, fn) == {"value": 1}
    assert store.run("models/a", {"x": 1}, fn) == {"value": 1} and len(calls) == 1  # reused
    assert not store.work("models/a").exists()  # heavy files go once the stage finished
    rec = json.loads((tmp_path / "models/a/stage.json").read_text())
    assert rec["key"] == stage_key({"x": 1}) and rec["config"] == {"x": 1}
    assert store.run("models/a", {"x": 2}, fn) == {"value": 2}  # other settings: run again
    assert [r.status for r in store.runs] == ["ran", "reused", "ran"]

    def dies(folder, work):
        (folder / "half.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.run("models/b", {"y": 1}, dies)
    assert (tmp_path / "models/b/half.json").exists() and store.record("models/b") is None
    seen = []
    store.run("models/b", {"y": 1}, lambda f, w: seen.append((f / "half.json").exists()) or {})
    assert seen == [True]  # the same settings continue from the partial files
    with pytest.raises(KeyboardInterrupt):
        store.run("models/c", {"z": 1}, dies)
    store.run("models/c", {"z": 2}, lambda f, w: seen.append((f / "half.json").exists()) or {})
    assert seen == [True, False]  # other settings never see them
    with pytest.raises(HeadgameError, match="relative folder"):
        store.folder("../x")
