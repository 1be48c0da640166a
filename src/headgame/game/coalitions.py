"""Coalitions of heads and the "selective coordination" test (docs/formulas.md#coalitions).

Numpy/scipy/scikit-learn only; accepts torch tensors or numpy arrays for G.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

__all__ = ["find_coalitions", "selective_coordination", "selective_coordination_change"]

_METHOD = (
    "SpectralBiclustering(n_clusters=k, method='bistochastic', random_state={seed}) on |G|+1e-6; "
    "row labels are coalitions; k chosen by silhouette on the precomputed distance 1-|G|"
)


def _abs_matrix(g: Any) -> np.ndarray:
    """|G| as a symmetric float64 numpy array [H, H]."""
    if hasattr(g, "detach"):  # torch tensor, without importing torch here
        g = g.detach().cpu().double().numpy()
    a = np.abs(np.asarray(g, dtype=np.float64))
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"G must be a square [H, H] matrix, got shape {a.shape}")
    return 0.5 * (a + a.T)


def _canonical(labels: Sequence[int]) -> list[int]:
    """Relabel so that labels appear as 0, 1, 2, … in order of first appearance."""
    mapping: dict[int, int] = {}
    return [mapping.setdefault(int(x), len(mapping)) for x in labels]


def find_coalitions(g: Any, ks: Sequence[int] = (2, 3, 4), seed: int = 0) -> dict[str, Any]:
    """Split the heads into coalitions by spectral biclustering of |G| (docs/formulas.md#coalitions).

    For each valid k (2 ≤ k ≤ H−1) fit ``SpectralBiclustering(n_clusters=k,
    method="bistochastic", random_state=seed)`` on |G| + 1e-6 and take the row labels (|G| is
    symmetric). k is chosen by the silhouette score on the distance 1 − |G| (clipped at 0,
    zero diagonal); ties go to the smaller k. A k is skipped when the fit fails, yields fewer
    than k distinct labels, or its silhouette is undefined. Labels are canonical (0, 1, … in
    order of first appearance), so results are deterministic for a given seed.

    Returns:
        {"k", "labels" (list[int]), "sizes" (list[int] per label), "silhouette" ({k: score}),
        "method", "skipped" ({k: reason})}, plus "note" when no k was usable and all heads
        form a single coalition.
    """
    from sklearn.cluster import SpectralBiclustering  # lazy: sklearn is slow to import
    from sklearn.metrics import silhouette_score

    a = _abs_matrix(g)
    h = a.shape[0]
    dist = np.clip(1.0 - a, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    scores: dict[int, float] = {}
    labels_by_k: dict[int, list[int]] = {}
    skipped: dict[int, str] = {}
    for k in sorted({int(k) for k in ks}):
        if not 2 <= k <= h - 1:
            skipped[k] = f"k must satisfy 2 <= k <= H-1 = {h - 1}"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate rows
                model = SpectralBiclustering(
                    n_clusters=k, method="bistochastic", random_state=seed
                ).fit(a + 1e-6)
        except (ValueError, np.linalg.LinAlgError) as exc:
            skipped[k] = f"biclustering failed: {exc}"
            continue
        labels = _canonical(model.row_labels_)
        if len(set(labels)) < k:
            skipped[k] = f"only {len(set(labels))} distinct labels"
            continue
        try:
            score = float(silhouette_score(dist, labels, metric="precomputed"))
        except ValueError as exc:
            skipped[k] = f"silhouette undefined: {exc}"
            continue
        if not np.isfinite(score):
            skipped[k] = "silhouette undefined"
            continue
        scores[k], labels_by_k[k] = score, labels
    method = _METHOD.format(seed=seed)
    if not scores:
        return {
            "k": 1,
            "labels": [0] * h,
            "sizes": [h],
            "silhouette": {},
            "method": method,
            "skipped": skipped,
            "note": f"no usable k in {tuple(ks)} for H={h}; all heads form one coalition",
        }
    best = max(scores, key=lambda k: (scores[k], -k))
    labels = labels_by_k[best]
    return {
        "k": best,
        "labels": labels,
        "sizes": [labels.count(c) for c in range(best)],
        "silhouette": scores,
        "method": method,
        "skipped": skipped,
    }


def _pair_masks(h: int, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle indices and within/between masks over the pairs i < j."""
    lab = np.asarray(labels)
    if lab.shape != (h,):
        raise ValueError(f"labels must have one entry per head ({h}), got {lab.shape}")
    iu = np.triu_indices(h, k=1)
    within = lab[iu[0]] == lab[iu[1]]
    return np.stack(iu), within, ~within


def _rank_biserial(u: float, n1: int, n2: int) -> float:
    """r = 2U/(n1·n2) − 1 for U of the first sample: +1 when it always ranks higher."""
    return 2.0 * u / (n1 * n2) - 1.0


def selective_coordination(g: Any, labels: Sequence[int]) -> dict[str, Any]:
    """One-sided Mann–Whitney U test: within-coalition |G_ij| > between-coalition |G_ij|.

    docs/formulas.md#coalitions: pairs i < j; "selective coordination" means within > between.
    U is scipy's statistic for the within sample; r = 2U/(n_within·n_between) − 1 is the
    rank-biserial effect size (+1: every within pair couples more than every between pair).

    Returns:
        {"U", "p", "effect_size_r", "n_within", "n_between", "within_mean", "between_mean"},
        with U, p and r None plus a "note" when either group is empty.
    """
    a = _abs_matrix(g)
    iu, w_mask, b_mask = _pair_masks(a.shape[0], labels)
    vals = a[iu[0], iu[1]]
    within, between = vals[w_mask], vals[b_mask]
    out: dict[str, Any] = {
        "U": None,
        "p": None,
        "effect_size_r": None,
        "n_within": int(within.size),
        "n_between": int(between.size),
        "within_mean": float(within.mean()) if within.size else None,
        "between_mean": float(between.mean()) if between.size else None,
    }
    if within.size == 0 or between.size == 0:
        out["note"] = "no within-coalition or no between-coalition pairs; test undefined"
        return out
    res = mannwhitneyu(within, between, alternative="greater")
    out["U"], out["p"] = float(res.statistic), float(res.pvalue)
    out["effect_size_r"] = _rank_biserial(out["U"], within.size, between.size)
    return out


def selective_coordination_change(g_before: Any, g_after: Any, labels: Sequence[int]) -> dict[str, Any]:
    """Did coupling fall more between coalitions than within them? (docs/formulas.md#coalitions)

    Δ_ij = |G_after,ij| − |G_before,ij| over pairs i < j, split by ``labels`` (typically the
    coalitions of the "before" model). One-sided Mann–Whitney U of Δ between-coalition (first
    sample) vs Δ within-coalition, alternative "less": "selective" means GAME-LoRA lowers
    between-coalition coupling more than within-coalition coupling, i.e. between Δs are
    smaller (more negative). U is scipy's statistic for the between sample;
    ``effect_size_r`` = 1 − 2U/(n_between·n_within) is positive when selective (+1: every
    between pair dropped more than every within pair).

    Returns:
        {"U", "p", "effect_size_r", "n_within", "n_between", "delta_within_mean",
        "delta_between_mean", "before_within_mean", "before_between_mean",
        "after_within_mean", "after_between_mean"}, with U, p, r None and a "note" when either
        group is empty.
    """
    a0, a1 = _abs_matrix(g_before), _abs_matrix(g_after)
    if a0.shape != a1.shape:
        raise ValueError(f"G_before {a0.shape} and G_after {a1.shape} differ in shape")
    iu, w_mask, b_mask = _pair_masks(a0.shape[0], labels)
    v0, v1 = a0[iu[0], iu[1]], a1[iu[0], iu[1]]
    delta = v1 - v0

    def _mean(v: np.ndarray) -> float | None:
        return float(v.mean()) if v.size else None

    out: dict[str, Any] = {
        "U": None,
        "p": None,
        "effect_size_r": None,
        "n_within": int(w_mask.sum()),
        "n_between": int(b_mask.sum()),
        "delta_within_mean": _mean(delta[w_mask]),
        "delta_between_mean": _mean(delta[b_mask]),
        "before_within_mean": _mean(v0[w_mask]),
        "before_between_mean": _mean(v0[b_mask]),
        "after_within_mean": _mean(v1[w_mask]),
        "after_between_mean": _mean(v1[b_mask]),
    }
    if out["n_within"] == 0 or out["n_between"] == 0:
        out["note"] = "no within-coalition or no between-coalition pairs; test undefined"
        return out
    res = mannwhitneyu(delta[b_mask], delta[w_mask], alternative="less")
    out["U"], out["p"] = float(res.statistic), float(res.pvalue)
    out["effect_size_r"] = -_rank_biserial(out["U"], out["n_between"], out["n_within"])
    return out
