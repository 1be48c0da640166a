"""Standard errors, relative changes and paired significance tests (docs/formulas.md#mcnemar). Pure.

Per-item records carry ``num`` and ``den`` and a task score is ``f(Σ num / Σ den)`` with ``f``
the identity or ``exp`` (perplexity), so one resampling routine serves accuracies, the MC2
probability mass, bits per byte and perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

BOOTSTRAP_RESAMPLES = 10_000
# Two scores closer than this, relative to the scores' magnitude, are equal: a float64 sum of n
# items carries a relative rounding error of up to about n·2⁻⁵³ (1e-10 for a million items), so
# smaller differences are arithmetic, not evidence for either model.
TIE_RTOL = 1e-9


def _apply(values: np.ndarray, transform: str) -> np.ndarray:
    return np.exp(values) if transform == "exp" else values


def ratio_score(num: Sequence[float], den: Sequence[float], transform: str = "identity") -> float:
    n, d = float(np.sum(num)), float(np.sum(den))
    return float(_apply(np.array(n / d), transform)) if d else math.nan


def resampled_scores(num: np.ndarray, den: np.ndarray, idx: np.ndarray, transform: str) -> np.ndarray:
    """Scores of the resamples ``idx`` [B, n] (rows of item indices)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return _apply(num[idx].sum(axis=1) / den[idx].sum(axis=1), transform)


def stderr(num: Sequence[float], den: Sequence[float], transform: str = "identity", *, resamples: int = 1000,
           seed: int = 0) -> float:
    """Standard error of the task score: the sample standard error of the mean when every
    denominator is 1 and the transform is the identity (lm-eval's ``mean`` stderr); else the
    standard deviation of ``resamples`` bootstrap scores."""
    num_a, den_a = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    n = len(num_a)
    if n < 2:
        return math.nan
    if transform == "identity" and np.all(den_a == 1):
        return float(np.std(num_a, ddof=1) / math.sqrt(n))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    return float(np.std(resampled_scores(num_a, den_a, idx, transform), ddof=1))


def relative_delta(base: float, method: float, higher_is_better: bool = True) -> float:
    """Δ% = (method − base) / base × 100, sign flipped when lower is better (WikiText BPB)."""
    if not (math.isfinite(base) and math.isfinite(method)) or base == 0:
        return math.nan
    delta = (method - base) / abs(base) * 100.0
    return delta if higher_is_better else -delta


def mcnemar(base: Sequence[float], method: Sequence[float]) -> dict:
    """Exact McNemar test on paired binary outcomes (two-sided binomial test on discordant pairs)."""
    b_arr, m_arr = np.asarray(base) > 0.5, np.asarray(method) > 0.5
    b = int(np.sum(b_arr & ~m_arr))  # base right, method wrong
    c = int(np.sum(~b_arr & m_arr))  # base wrong, method right
    p = 1.0 if b + c == 0 else float(sps.binomtest(min(b, c), b + c, 0.5).pvalue)
    return {"test": "mcnemar", "b": b, "c": c, "p": min(p, 1.0)}


def paired_bootstrap(base_num: Sequence[float], base_den: Sequence[float], method_num: Sequence[float],
                     method_den: Sequence[float], transform: str = "identity", *,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Two-sided paired bootstrap of Δ = score(method) − score(base): items are resampled
    jointly; p = 2·min(P(Δ* ≤ 0), P(Δ* ≥ 0)), capped at 1 (the percentile-interval test).
    A resampled Δ* within ``TIE_RTOL`` of the scores' magnitude counts as 0 (a tie, on both sides)."""
    bn, bd = np.asarray(base_num, float), np.asarray(base_den, float)
    mn, md = np.asarray(method_num, float), np.asarray(method_den, float)
    n = len(bn)
    observed = ratio_score(mn, md, transform) - ratio_score(bn, bd, transform)
    if n < 2:
        return {"test": "paired_bootstrap", "resamples": 0, "delta": observed, "p": math.nan}
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    scale = max((abs(v) for v in (ratio_score(mn, md, transform), ratio_score(bn, bd, transform)) if math.isfinite(v)), default=0.0)
    step = max(1, 2_000_000 // max(n, 1))  # bound the index matrix to ~16 MB
    for s in range(0, resamples, step):
        idx = rng.integers(0, n, size=(min(step, resamples - s), n))
        ms, bs = resampled_scores(mn, md, idx, transform), resampled_scores(bn, bd, idx, transform)
        deltas[s: s + len(idx)] = ms - bs
        both = np.abs(np.concatenate([ms, bs]))
        both = both[np.isfinite(both)]
        if len(both):
            scale = max(scale, float(both.max()))
    deltas = deltas[np.isfinite(deltas)]
    tol = TIE_RTOL * scale
    p = min(1.0, 2.0 * min(float(np.mean(deltas <= tol)), float(np.mean(deltas >= -tol)))) if len(deltas) else math.nan
    lo, hi = np.percentile(deltas, [2.5, 97.5]) if len(deltas) else (math.nan, math.nan)
    return {"test": "paired_bootstrap", "resamples": resamples, "delta": observed, "ci95": [float(lo), float(hi)], "p": p}
