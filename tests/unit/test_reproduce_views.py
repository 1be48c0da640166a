"""The statistics of the gt-fep reproduction (reproduce/views.py) against values computed another
way: Wilson intervals from scipy's binomtest, Spearman ρ from the rank-difference formula by hand,
the overlap p by enumerating every draw, the pruning.json readers on a hand-written file."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from headgame.errors import HeadgameError
from headgame.reproduce import views


@pytest.mark.parametrize("k, n", [(0, 5), (3, 10), (10, 10), (17, 40), (1, 1)])
def test_wilson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert views.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_by_hand_and_bad_counts():
    # k = 5 of n = 10, z = 1.96: centre (0.5 + 1.9208/10) / 1.38416 = 0.5, half = 1.96·sqrt(0.025 + 0.009604)/1.38416
    half = 1.96 * math.sqrt(0.025 + 1.96 ** 2 / 400) / (1 + 1.96 ** 2 / 10)
    assert views.wilson_interval(5, 10, z=1.96) == pytest.approx((0.5 - half, 0.5 + half))
    assert all(math.isnan(x) for x in views.wilson_interval(0, 0))
    for k, n in ((4, 3), (-1, 3), (1.5, 3)):
        with pytest.raises(HeadgameError, match="0 <= k <= n"):
            views.wilson_interval(k, n)


def test_sign_statistics_reuses_fep_json_and_adds_the_rest():
    values = [-0.5, -0.2, -0.1, 0.3, -1e-12, -0.4]
    summary = {"n": 6, "mean": -0.15, "median": -0.15, "frac_negative": 5 / 6, "wilcoxon_stat": 1.0, "wilcoxon_p": 0.04}
    row = views.sign_statistics(summary, values, {"frac_negative": [0.5, 1.0], "mean": [-0.3, 0.0]})
    assert row["n_negative"] == 5 and row["wilcoxon_p_less"] == 0.04  # taken as fep.json has them
    assert (row["wilson_low"], row["wilson_high"]) == pytest.approx(views.wilson_interval(5, 6))
    assert row["bootstrap_frac_negative_low"] == 0.5 and row["bootstrap_mean_high"] == 0.0
    assert row["n_near_zero"] == 1
    # the two-sided p by hand: |values| ranks 1 (1e-12), 2 (0.1), 3 (0.2), 4 (0.3), 5 (0.4), 6 (0.5); W+ = 4;
    # exact null of W+ over 2^6 sign patterns
    ranks = np.arange(1, 7)
    w = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=6)]
    p_two = 2 * min(np.mean(np.array(w) <= 4), np.mean(np.array(w) >= 4))
    assert row["wilcoxon_p_two_sided"] == pytest.approx(min(1.0, p_two))
    empty = views.sign_statistics({"n": 0, "frac_negative": None})
    assert empty["n"] == 0 and empty["wilson_low"] is None and "wilcoxon_p_two_sided" not in empty


def test_sign_statistics_fills_a_missing_wilcoxon():
    row = views.sign_statistics({"n": 3, "frac_negative": 1.0, "wilcoxon_p": None}, [-1.0, -2.0, -3.0])
    # all three below 0: W+ = 0, the smallest of 8 equally likely sign patterns
    assert row["wilcoxon_p_less"] == pytest.approx(1 / 8)


def _layer(pairs: dict[tuple[int, int], float], h: int, diag: float = 0.0) -> np.ndarray:
    m = np.full((h, h), 0.0)
    np.fill_diagonal(m, diag)
    for (i, j), v in pairs.items():
        m[i, j] = m[j, i] = v
    return m


def test_spearman_per_layer_by_hand():
    # 4 heads, 6 pairs in row-major order (0,1) (0,2) (0,3) (1,2) (1,3) (2,3); G signs must not matter
    g_vals = [0.1, -0.5, 0.3, 0.9, -0.2, 0.7]  # |G| ranks: 1, 4, 3, 6, 2, 5
    mi_vals = [0.2, 0.1, 0.6, 0.5, 0.3, 0.9]  # MI ranks:  2, 1, 5, 4, 3, 6
    keys = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    g = _layer(dict(zip(keys, g_vals)), 4, diag=1.0)
    mi = _layer(dict(zip(keys, mi_vals)), 4)
    d2 = sum((a - b) ** 2 for a, b in zip([1, 4, 3, 6, 2, 5], [2, 1, 5, 4, 3, 6]))  # 1+9+4+4+1+1 = 20
    rho = 1 - 6 * d2 / (6 * (36 - 1))
    out = views.two_views({0: g}, {"0": mi}, {0: [1.0, 2.0, 3.0, 4.0]}, fraction=0.25)
    assert out["layers"][0]["n"] == 6 and out["layers"][0]["rho"] == pytest.approx(rho)
    assert out["pooled"]["rho"] == pytest.approx(rho)
    # row sums of |G| off the diagonal: head 0 0.9, 1 1.2, 2 2.1, 3 1.2 -> k = 1: head 2 is the most coupled
    assert out["k"] == 1 and out["coupled"] == ["0.2"]
    # summed MI: 0.9, 1.0, 1.5, 1.8 -> head 3; lowest fep score -> head 0
    assert [o["redundant"] for o in out["overlaps"]] == [["0.3"], ["0.0"]]
    assert all(o["overlap"] == 0 and o["jaccard"] == 0 for o in out["overlaps"])


def test_constant_view_and_few_pairs_give_no_rho():
    g = _layer({(0, 1): 0.2, (0, 2): 0.3, (1, 2): 0.4}, 3, 1.0)
    flat = _layer({(0, 1): 0.5, (0, 2): 0.5, (1, 2): 0.5}, 3)
    out = views.two_views({0: g, 1: g[:2, :2]}, {0: flat, 1: flat[:2, :2]}, {0: [0, 1, 2], 1: [0, 1]})
    assert out["layers"][0]["rho"] is None and "constant" in out["layers"][0]["note"]
    assert out["layers"][1]["n"] == 1 and out["layers"][1]["rho"] is None


def _brute_p(n: int, a: list[int], b: list[int]) -> float:
    """P(|D ∩ B| ≥ |A ∩ B|) over every draw D of |A| heads of n."""
    seen = len(set(a) & set(b))
    draws = list(itertools.combinations(range(n), len(a)))
    return sum(len(set(d) & set(b)) >= seen for d in draws) / len(draws)


@pytest.mark.parametrize("n, a, b", [(8, [0, 1, 2], [1, 2, 5]), (9, [3], [3, 4]), (10, [0, 1, 2, 3], [5, 6, 7]),
                                     (7, [0, 1, 2, 3, 4], [0, 1, 2, 3])])
def test_overlap_p_against_every_draw(n, a, b):
    o = views.overlap(a, b, n)
    inter = len(set(a) & set(b))
    assert o["overlap"] == inter and o["jaccard"] == pytest.approx(inter / len(set(a) | set(b)))
    assert o["p_hypergeom"] == pytest.approx(_brute_p(n, a, b))
    assert o["expected_overlap"] == pytest.approx(len(a) * len(b) / n)


def test_two_views_overlap_over_the_whole_model():
    rng = np.random.default_rng(3)
    h = 5
    gs, mis, feps = {}, {}, {}
    for layer in range(2):
        a = rng.normal(size=(h, h))
        gs[layer] = (a + a.T) / 2
        m = np.abs(rng.normal(size=(h, h)))
        mis[layer] = (m + m.T) / 2
        feps[layer] = list(rng.normal(size=h))
    out = views.two_views(gs, mis, feps, fraction=0.3)
    assert out["n_heads"] == 10 and out["k"] == 3
    # the coupled heads by hand: all 10 row sums of |G| off the diagonal, the 3 largest
    rows = [(float(np.abs(gs[l][i]).sum() - abs(gs[l][i, i])), f"{l}.{i}") for l in range(2) for i in range(h)]
    assert sorted(out["coupled"]) == sorted(name for _, name in sorted(rows, reverse=True)[:3])
    lowest = [f"{l}.{i}" for _, l, i in sorted((feps[l][i], l, i) for l in range(2) for i in range(h))[:3]]
    assert sorted(out["overlaps"][1]["redundant"]) == sorted(lowest)
    for o in out["overlaps"]:
        idx = lambda names: [int(s.split(".")[0]) * h + int(s.split(".")[1]) for s in names]  # noqa: E731
        assert o["p_hypergeom"] == pytest.approx(_brute_p(10, idx(o["redundant"]), idx(out["coupled"])))


@pytest.mark.parametrize("kwargs, message", [
    (dict(coupling={0: np.eye(3)}, mi={0: np.zeros((4, 4))}, fep={0: [0, 0, 0]}), "G has 3 heads"),
    (dict(coupling={0: np.eye(3)}, mi={1: np.zeros((3, 3))}, fep={1: [0, 0, 0]}), "share no layer"),
    (dict(coupling={0: np.ones((2, 3))}, mi={0: np.zeros((2, 3))}, fep={0: [0, 0]}), "not a square"),
    (dict(coupling={0: np.eye(2)}, mi={0: np.zeros((2, 2))}, fep={0: [0, float("nan")]}), "NaN"),
    (dict(coupling={0: np.eye(2)}, mi={0: np.zeros((2, 2))}, fep={0: [0, 1]}, fraction=1.5), "outside"),
])
def test_two_views_bad_inputs_are_one_line(kwargs, message):
    with pytest.raises(HeadgameError, match=message) as exc:
        views.two_views(**kwargs)
    assert "\n" not in str(exc.value)


def _variant(red: float, att: float, speed: float, implied: float, ppl: float, change: float | None) -> dict:
    return {"n_pruned": 2, "flops": {"analytic": {"reduction_total": red, "reduction_attention": att},
                                     "measured": {"reduction_total": red, "reduction_attention": att}},
            "throughput": {"forward": {"measured_speedup": speed, "flop_implied_speedup": implied,
                                       "times_s": [1.0, 2.0], "base_times_s": [1.2, 2.6]}},
            "perplexity": {"gsm8k": {"available": True, "ppl": ppl, "change_rel": change}}}


def test_prune_points_and_heal_summary_from_a_hand_written_pruning_json():
    base = {"flops": {"analytic": {"total": 100, "attention": 40, "seq_len": 64}},
            "perplexity": {"gsm8k": {"available": True, "kind": "perplexity", "ppl": 10.0}},
            "throughput": {"forward": {"tokens_per_s": 50.0}}}
    fep = _variant(0.1, 0.25, 1.05, 1.11, 12.0, 0.2)
    runs = [_variant(0.1, 0.25, 1.0, 1.11, p, p / 10 - 1) for p in (14.0, 18.0)]
    pruning = {"primary": "fep", "budget": {"fraction": 0.2}, "base": base, "data": {"perplexity_sets": [{"name": "gsm8k"}]},
               "results": {"fep": fep, "random": {"seeds": [42, 43], "runs": runs}},
               "healed": {"tokens": 512, "method": "ce", "recovery": {"gsm8k": {
                   "pruned_before": 12.0, "pruned_healed": 9.0, "unpruned_before": 10.0, "unpruned_healed": 8.0,
                   "healed_pruned_over_healed_unpruned": 9.0 / 8.0 - 1}}}}
    pts = views.prune_points(pruning)
    f, r = pts["points"]
    assert f["criterion"] == "fep" and f["flops_attention_analytic"] == 0.25 and f["throughput_gain"] == pytest.approx(0.05)
    assert (f["speedup_paired_min"], f["speedup_paired_max"]) == pytest.approx((1.2, 1.3))
    assert r["ppl_gsm8k"]["mean"] == 16.0 and r["ppl_gsm8k"]["sd"] == pytest.approx(math.sqrt(8.0)) and r["ppl_gsm8k"]["n"] == 2
    assert pts["base"]["flops_seq_len"] == 64 and pts["base"]["perplexity"]["gsm8k"]["ppl"] == 10.0
    heal = views.heal_summary(pruning)
    row = heal["recovery"][0]
    assert row["gap_before"] == pytest.approx(0.2) and row["gap_healed"] == pytest.approx(0.125)
    assert heal["at_fraction"]["ppl_gsm8k"] == 12.0 and heal["fraction"] == 0.2
    with pytest.raises(HeadgameError, match="--heal-tokens"):
        views.heal_summary({**pruning, "healed": None})
