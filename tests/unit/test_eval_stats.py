"""Standard errors, relative Δ, McNemar, paired bootstrap and the comparison table, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from headgame.evaluate.compare import compare, to_html, to_markdown
from headgame.evaluate.stats import mcnemar, relative_delta, stderr


def test_stderr_of_a_mean_and_of_a_ratio():
    x = [1, 0, 1, 1, 0, 1, 1, 0]
    assert stderr(x, [1] * 8) == pytest.approx(np.std(x, ddof=1) / math.sqrt(8))
    se = stderr([3.0, 5.0, 4.0, 6.0], [10, 12, 9, 14], resamples=2000)
    assert 0 < se < 0.1
    assert math.isnan(stderr([1.0], [1]))


def test_relative_delta_flips_for_lower_is_better():
    assert relative_delta(0.376, 0.445) == pytest.approx(18.35, abs=0.01)  # HE-QA, spec §10.1
    assert relative_delta(0.784, 0.786, higher_is_better=False) == pytest.approx(-0.255, abs=0.001)
    assert math.isnan(relative_delta(0.0, 0.5))


def test_mcnemar_exact_on_discordant_pairs():
    base = [1] * 10 + [0] * 10 + [1] * 2 + [0] * 8
    meth = [1] * 10 + [0] * 10 + [0] * 2 + [1] * 8
    res = mcnemar(base, meth)
    assert (res["b"], res["c"]) == (2, 8)  # p against the exact binomial sum: test_eval_stats_exact.py
    assert mcnemar([1, 0, 1], [1, 0, 1])["p"] == 1.0


def _run(scores: dict[str, tuple[float, list[float], bool, bool, str]]) -> dict:
    tasks = {}
    for name, (score, outcomes, binary, hib, group) in scores.items():
        tasks[name] = {
            "label": name.upper(), "group": group, "metric": "acc", "binary": binary, "higher_is_better": hib,
            "transform": "identity", "score": score,
            "items": [{"id": i, "num": v, "den": 1} for i, v in enumerate(outcomes)],
        }
    return {"model": {"spec": "m"}, "decoding": {"name": "greedy"}, "tasks": tasks}


def test_compare_table_aggregates_and_marks():
    n = 40
    base_bin = [1.0] * 10 + [0.0] * 30
    meth_bin = [1.0] * 25 + [0.0] * 15  # 15 wins, 0 losses: McNemar p < 0.05
    flat = [0.5] * n
    base = _run({
        "halueval_qa": (0.25, base_bin, True, True, "halluc"),
        "truthfulqa_mc2": (0.5, flat, False, True, "halluc"),
        "wikitext": (0.8, [0.8] * n, False, False, "knowledge"),
        "mmlu": (0.5, flat, False, True, "knowledge"),
    })
    meth = _run({
        "halueval_qa": (0.625, meth_bin, True, True, "halluc"),
        "truthfulqa_mc2": (0.5, flat, False, True, "halluc"),
        "wikitext": (0.88, [0.88] * n, False, False, "knowledge"),
        "mmlu": (0.55, [0.55] * n, False, True, "knowledge"),
    })
    res = compare(base, meth, resamples=500)
    rows = {r.task: r for r in res["rows"]}
    assert rows["halueval_qa"].delta == pytest.approx(150.0) and rows["halueval_qa"].significant
    assert rows["halueval_qa"].test.startswith("McNemar")
    assert rows["wikitext"].delta == pytest.approx(-10.0)  # BPB up = worse
    assert not rows["truthfulqa_mc2"].significant
    assert res["aggregates"]["halluc"]["delta"] == pytest.approx((150.0 + 0.0) / 2)
    assert res["aggregates"]["knowledge"]["delta"] == pytest.approx((-10.0 + 10.0) / 2)
    md = to_markdown(res)
    assert "| HALUEVAL_QA | acc | 0.250 | 0.625 | +150.0%* |" in md
    assert "Halluc Δ" in md and "Knowledge Δ" in md and "mean of 2/6" in md
    page = to_html(res)
    assert page.startswith("<!DOCTYPE html>") and "+150.0%*" in page and "Knowledge Δ" in page


def test_compare_uses_only_shared_items():
    base = _run({"mmlu": (0.75, [1.0, 0.0, 1.0, 1.0], True, True, "knowledge")})
    meth = _run({"mmlu": (0.5, [1.0, 0.0], True, True, "knowledge")})
    res = compare(base, meth)
    assert res["rows"][0].n == 2 and any("the 2 items in both" in n for n in res["notes"])
    assert res["rows"][0].base == pytest.approx(0.5) and res["rows"][0].delta == pytest.approx(0.0)
