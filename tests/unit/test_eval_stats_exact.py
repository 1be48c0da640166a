"""McNemar and the paired bootstrap against values computed without the code under test.

* McNemar (exact, two-sided): with b and c the discordant pairs and n = b + c, the p-value is
  min(1, 2 · Σ_{k ≤ min(b, c)} C(n, k) / 2ⁿ) (McNemar 1947, exact binomial form), summed here in
  exact rational arithmetic.
* The paired bootstrap resamples the n items jointly, uniformly with replacement, so each of the
  nⁿ index tuples is equally likely. For n = 5 all 3125 are enumerated: the exact bootstrap
  distribution of Δ* = score(method) − score(base), and the p-value the code estimates,
  p = min(1, 2 · min(P(Δ* ≤ 0), P(Δ* ≥ 0))). The code's Monte-Carlo estimate must fall within
  a few standard errors of it.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from headgame.evaluate.stats import mcnemar, paired_bootstrap


def _exact_mcnemar(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(Fraction(math.comb(n, k), 2**n) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), 2 * tail))


@pytest.mark.parametrize("b, c", [(2, 8), (8, 2), (5, 5), (0, 0), (0, 7), (1, 0), (0, 1), (3, 4),
                                  (60, 40), (300, 250), (1000, 1100), (17, 0)])
def test_mcnemar_is_the_exact_binomial_sum(b, c):
    # b items only the base gets right, c only the method, and some concordant pairs either way
    base = [1] * b + [0] * c + [1] * 9 + [0] * 4
    method = [0] * b + [1] * c + [1] * 9 + [0] * 4
    res = mcnemar(base, method)
    assert (res["b"], res["c"]) == (b, c)
    assert res["p"] == pytest.approx(_exact_mcnemar(b, c), rel=1e-9, abs=1e-300)


def test_mcnemar_reference_values():
    # by hand: b = 0, c = 5 → 2 · 1/32; b = 1, c = 4 → 2 · (1 + 5)/32; b = c → 1
    assert _exact_mcnemar(0, 5) == 2 / 32 and _exact_mcnemar(1, 4) == 12 / 32 and _exact_mcnemar(3, 3) == 1.0
    assert mcnemar([0] * 5, [1] * 5)["p"] == pytest.approx(0.0625, rel=1e-12)
    assert mcnemar([1, 0, 0, 0, 0], [0, 1, 1, 1, 1])["p"] == pytest.approx(0.375, rel=1e-12)


def _exact_bootstrap(base_num, base_den, method_num, method_den, transform=None):
    """Every resample of n items: P(Δ* ≤ 0), P(Δ* ≥ 0) and all Δ* (Fractions when no transform)."""
    n = len(base_num)
    fr = (lambda v: Fraction(v)) if transform is None else float
    bn, bd, mn, md = ([fr(v) for v in seq] for seq in (base_num, base_den, method_num, method_den))
    f = (lambda x: x) if transform is None else transform
    deltas = []
    for idx in itertools.product(range(n), repeat=n):
        deltas.append(f(sum(mn[i] for i in idx) / sum(md[i] for i in idx)) - f(sum(bn[i] for i in idx) / sum(bd[i] for i in idx)))
    le = Fraction(sum(d <= 0 for d in deltas), len(deltas))
    ge = Fraction(sum(d >= 0 for d in deltas), len(deltas))
    return le, ge, sorted(float(d) for d in deltas)


CASES = {
    # per-item accuracies / MC2 masses (den = 1); dyadic values, so float sums are exact and
    # the resamples that only draw item 1 give exact ties
    "mean": ([0.5, 0.25, 0.75, 0.5, 0.125], [1] * 5, [0.625, 0.25, 0.5, 0.875, 0.25], [1] * 5, "identity"),
    # a ratio of sums, as bits per byte (num = bits, den = bytes)
    "ratio": ([3.0, 5.0, 4.0, 6.0, 2.0], [10, 12, 9, 14, 8], [2.5, 5.5, 4.0, 5.0, 2.5], [10, 12, 9, 14, 8], "identity"),
    # a perplexity, exp(Σ NLL / Σ tokens)
    "exp": ([10.0, 12.0, 11.0, 9.0, 14.0], [5, 6, 5, 4, 7], [10.5, 11.0, 11.5, 9.5, 13.0], [5, 6, 5, 4, 7], "exp"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bootstrap_p_matches_full_enumeration(case):
    bn, bd, mn, md, transform = CASES[case]
    le, ge, deltas = _exact_bootstrap(bn, bd, mn, md, None if transform == "identity" else math.exp)
    exact_p = float(min(Fraction(1), 2 * min(le, ge)))
    q = float(min(le, ge))
    assert 0.05 < exact_p < 0.95  # a case that is not trivially 0 or 1
    resamples = 200_000
    res = paired_bootstrap(bn, bd, mn, md, transform, resamples=resamples, seed=1)
    se = 2 * math.sqrt(q * (1 - q) / resamples)  # standard error of 2·(a proportion)
    assert abs(res["p"] - exact_p) < 5 * se, (res["p"], exact_p, se)
    # the observed Δ, and the 95 % interval between the exact 2 % and 3 % (97 % and 98 %) quantiles
    f = (lambda x: x) if transform == "identity" else math.exp
    observed = f(sum(mn) / sum(md)) - f(sum(bn) / sum(bd))
    assert res["delta"] == pytest.approx(observed, rel=1e-12, abs=1e-15)
    lo, hi = res["ci95"]
    quantile = lambda p: deltas[min(len(deltas) - 1, int(p * len(deltas)))]
    assert quantile(0.02) - 1e-12 <= lo <= quantile(0.03) + 1e-12
    assert quantile(0.97) - 1e-12 <= hi <= quantile(0.98) + 1e-12


def test_rounding_is_a_tie_not_a_significant_difference():
    # the method scores every item as the base does, up to 4 units in the last place (the same
    # log-probabilities summed in another order): Δ* is 0 on every resample, so p = 1. Compared
    # exactly, every Δ* > 0 and the test would call the models significantly different.
    base = np.array([0.31, 0.62, 0.47, 0.88, 0.15, 0.73, 0.54, 0.29, 0.66, 0.41])
    method = base.copy()
    for _ in range(4):
        method = np.nextafter(method, 1.0)
    assert (method > base).all()
    res = paired_bootstrap(base, np.ones(10), method, np.ones(10), resamples=2000)
    assert res["p"] == 1.0
    # records scaled by 10 (num and den) give the same ratio on every resample
    res = paired_bootstrap(base * 0.1, np.ones(10) * 0.1, base, np.ones(10), resamples=2000)
    assert res["p"] == 1.0
    # a real difference of one part in a million is still seen
    res = paired_bootstrap(base, np.ones(10), base * (1 + 1e-6), np.ones(10), resamples=2000)
    assert res["p"] == 0.0
