"""Which heads each pruned model loses: one-shot selections at every fraction of a curve, and the
iterative path (remove a step's worth of heads, re-score the rest with them gated off, repeat).

One-shot: a criterion's scores are computed once and every fraction selects from them
(:func:`one_shot`), so the heads pruned at 10 % are a subset of those at 20 % for a global
head ranking. Iterative (:func:`iterative`): the step counts land exactly on each fraction's
budget, so a curve's points are snapshots of one path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from headgame.errors import HeadgameError
from headgame.measure.select import budget, greedy_keep_one, round_half_up, select

Removed = dict[int, list[int]]


def group_size(layout) -> int:
    """Query heads per KV head on grouped-query models (1 when every head has its own K and V)."""
    if layout.family_def.grouped_kv and 0 < layout.n_kv_heads < layout.n_heads:
        return layout.n_heads // layout.n_kv_heads
    return 1


def one_shot(key: np.ndarray, fractions: list[float], layout, *, selection: str = "head", per_layer: bool = False,
             rounding: str = "nearest") -> dict[float, Removed]:
    """``{fraction: {layer: heads}}`` from one ascending pruning key [L, H]."""
    return {f: select(key, f, selection=selection, group_size=group_size(layout), per_layer=per_layer, rounding=rounding)
            for f in fractions}


def extend(key: np.ndarray, removed: Removed, n_more: int) -> Removed:
    """``removed`` plus the ``n_more`` heads of smallest key among those left, globally, every layer
    keeping at least one head; ties by (layer, head). Heads already removed are never chosen."""
    key = np.asarray(key, dtype=float)
    n_layers, n_heads = key.shape
    gone = {(l, h) for l, hs in removed.items() for h in hs}
    left = {l: n_heads - len(removed.get(l, [])) for l in range(n_layers)}
    cand = [(float(key[l, h]), l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in gone]
    if any(not np.isfinite(k) for k, _, _ in cand):
        raise HeadgameError("head scores contain NaN or infinity; rerun the scoring with more data or another criterion")
    out, n_more = greedy_keep_one(cand, left, n_more, {l: list(hs) for l, hs in removed.items()})
    if n_more:
        raise HeadgameError("not enough heads left to prune while every layer keeps one; lower the largest fraction")
    return {l: sorted(v) for l, v in sorted(out.items()) if v}


def iterative_counts(fractions: list[float], n_total: int, n_layers: int, step: float) -> list[int]:
    """Cumulative numbers of heads removed after each step: steps of round(step · H) heads,
    shortened where needed to land on every fraction's budget."""
    targets = sorted({budget([n_total // n_layers] * n_layers, f, per_layer=False) for f in fractions})  # [H] per layer
    size = max(1, round_half_up(step * n_total))
    counts, done = [], 0
    for target in targets:
        while done < target:
            done = min(done + size, target)
            counts.append(done)
    return counts


def iterative(score: Callable[[Removed], np.ndarray], pruning_key: Callable[[np.ndarray], np.ndarray],
              fractions: list[float], layout, step: float) -> tuple[dict[float, Removed], list[np.ndarray]]:
    """The iterative path: ``score(removed)`` gives [L, H] scores of the model with ``removed`` gated
    off (entries of removed heads are ignored); returns the snapshot at every fraction's budget and
    the scores of every step (the first is the one-shot score)."""
    n_total = layout.n_layers * layout.n_heads
    counts = iterative_counts(fractions, n_total, layout.n_layers, step)
    by_count = [(budget([layout.n_heads] * layout.n_layers, f, per_layer=False), f) for f in fractions]
    removed: Removed = {}
    snapshots: dict[float, Removed] = {}
    history: list[np.ndarray] = []
    done = 0
    for target in counts:
        scores = np.asarray(score(removed), dtype=float)
        history.append(scores)
        key = np.array(pruning_key(scores), dtype=float)
        for l, hs in removed.items():
            key[l, hs] = 0.0  # never chosen again; any finite value
        removed = extend(key, removed, target - done)
        done = target
        for count, f in by_count:  # two fractions of equal budget share a snapshot
            if count == done:
                snapshots[f] = {l: list(h) for l, h in removed.items()}
    return {f: snapshots[f] for f in sorted(fractions)}, history
