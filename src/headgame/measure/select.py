"""Which heads to prune: rank by a criterion, global or per layer, keep at least one per layer.

The budget is ⌊fraction · H_total⌉ (round half up: 29 of 144 at 20 %),
ranked globally across layers by default; ``per_layer`` prunes ⌊fraction · H_ℓ⌉ in each layer
(``rounding="ceil"``: ⌈fraction · H_ℓ⌉, as the GT-FEP authors' code does: 3 of 12 heads at 20 %).
Ties break by (layer, head) order so that a ranking is reproducible.

On grouped-query models :func:`select_groups` removes whole groups of query heads (those sharing
one KV head, ranked by the mean of their keys) so that the KV heads, and their share of the KV
cache, go too; :func:`select` dispatches on ``selection`` (:data:`SELECTIONS`).
"""

from __future__ import annotations

import math

import numpy as np

from headgame.errors import HeadgameError


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-12))


def check_fraction(fraction: float) -> float:
    if not isinstance(fraction, (int, float)) or not math.isfinite(fraction) or not 0.0 < fraction < 1.0:
        raise HeadgameError(f"--fraction {fraction} is outside (0, 1); pass the share of heads to prune, e.g. --fraction 0.2")
    return float(fraction)


ROUNDINGS = ("nearest", "ceil")


def budget(n_heads_per_layer: list[int], fraction: float, *, per_layer: bool, rounding: str = "nearest") -> list[int] | int:
    """Heads to prune: one number (global) or one per layer; raises when a layer would be emptied.
    ``rounding`` of the per-layer counts: nearest (half up) or ceil."""
    check_fraction(fraction)
    if rounding not in ROUNDINGS:
        raise HeadgameError(f"--per-layer-rounding {rounding} is not valid; choose one of {', '.join(ROUNDINGS)}")
    if per_layer:
        counts = [math.ceil(fraction * h - 1e-12) if rounding == "ceil" else round_half_up(fraction * h) for h in n_heads_per_layer]
        for layer, (k, h) in enumerate(zip(counts, n_heads_per_layer)):
            if k >= h:
                raise HeadgameError(
                    f"--per-layer --fraction {fraction} would prune all {h} heads of layer {layer} "
                    f"(round({fraction} x {h}) = {k}); lower --fraction below {(h - 0.5) / h:.3f}"
                )
        if sum(counts) == 0:
            raise HeadgameError(
                f"--per-layer --fraction {fraction} prunes no head (round({fraction} x {max(n_heads_per_layer)}) = 0); raise --fraction"
            )
        return counts
    total = sum(n_heads_per_layer)
    k = round_half_up(fraction * total)
    spare = total - len(n_heads_per_layer)  # every layer keeps one head
    if k > spare:
        raise HeadgameError(
            f"--fraction {fraction} would prune {k} of {total} heads, emptying a layer ({len(n_heads_per_layer)} layers must "
            f"keep one head each); lower --fraction to at most {spare / total:.3f}"
        )
    if k == 0:
        raise HeadgameError(f"--fraction {fraction} prunes no head (round({fraction} x {total}) = 0); raise --fraction")
    return k


def select_heads(key: np.ndarray, fraction: float, *, per_layer: bool = False, rounding: str = "nearest") -> dict[int, list[int]]:
    """Heads to prune from an ascending pruning key [L, H] (smallest first): ``{layer: [heads]}``."""
    key = np.asarray(key, dtype=float)
    n_layers, n_heads = key.shape
    if not np.isfinite(key).all():
        raise HeadgameError("head scores contain NaN or infinity; rerun the scoring with more data or another criterion")
    counts = budget([n_heads] * n_layers, fraction, per_layer=per_layer, rounding=rounding)
    chosen: dict[int, list[int]] = {}
    if per_layer:
        for l, k in enumerate(counts):
            order = np.lexsort((np.arange(n_heads), key[l]))  # by key, then head
            if k:
                chosen[l] = sorted(int(h) for h in order[:k])
        return chosen
    flat = [(float(key[l, h]), l, h) for l in range(n_layers) for h in range(n_heads)]
    chosen, _ = greedy_keep_one(flat, {l: n_heads for l in range(n_layers)}, counts)
    return {l: sorted(v) for l, v in sorted(chosen.items())}


def greedy_keep_one(items: list[tuple[float, int, int]], left: dict[int, int], need: int,
                    chosen: dict[int, list[int]] | None = None) -> tuple[dict[int, list[int]], int]:
    """Take ``need`` of ``items`` = (key, layer, unit) in ascending (key, layer, unit) order, skipping
    a unit whose layer has only one left (``left``: units each layer still has; updated); returns
    ``({layer: [units]}, how many could not be taken)``. Every layer keeps at least one unit."""
    chosen = {} if chosen is None else chosen
    for _, l, u in sorted(items):
        if need == 0:
            break
        if left[l] <= 1:
            continue
        chosen.setdefault(l, []).append(u)
        left[l] -= 1
        need -= 1
    return chosen, need


SELECTIONS = ("head", "group")


def select_groups(key: np.ndarray, fraction: float, group_size: int, *, per_layer: bool = False,
                  rounding: str = "nearest") -> dict[int, list[int]]:
    """Whole GQA groups to prune from an ascending per-head key [L, H]: ``{layer: [heads]}``.

    Head h is in group h // group_size; a group's key is the mean of its heads' keys. The budget
    is :func:`budget`'s head count for ``fraction`` (so it is comparable to :func:`select_heads`)
    converted to groups, round(k / group_size) half up (per layer: each layer's count), and at
    least one group in total; with ``per_layer`` and every layer's count 0, the one group with
    the smallest key overall goes. Globally every layer keeps at least one group. Ties break by
    (layer, group) order. Removing a whole group removes its KV head, which is what shrinks
    the KV cache; single query heads do not.
    """
    key = np.asarray(key, dtype=float)
    n_layers, n_heads = key.shape
    if not np.isfinite(key).all():
        raise HeadgameError("head scores contain NaN or infinity; rerun the scoring with more data or another criterion")
    if not isinstance(group_size, (int, np.integer)) or group_size < 1 or n_heads % group_size:
        raise HeadgameError(
            f"{n_heads} query heads do not split into groups of {group_size}; pass the model's query heads per KV head "
            f"(a divisor of {n_heads})"
        )
    g = int(group_size)
    n_groups = n_heads // g
    gkey = key.reshape(n_layers, n_groups, g).mean(axis=2)
    counts = budget([n_heads] * n_layers, fraction, per_layer=per_layer, rounding=rounding)

    def heads_of(groups: list[int]) -> list[int]:
        return sorted(h for q in groups for h in range(q * g, (q + 1) * g))

    if per_layer:
        groups = [round_half_up(k / g) for k in counts]
        for layer, kg in enumerate(groups):
            if kg >= n_groups:
                raise HeadgameError(
                    f"--per-layer --fraction {fraction} would prune all {n_groups} groups of {g} heads of layer {layer} "
                    f"(round({counts[layer]} / {g}) = {kg}); lower --fraction to at most {(n_groups - 1) * g / n_heads:.3f}"
                )
        if sum(groups) == 0:
            # every layer's share rounds to no group: prune the single weakest group rather than nothing
            l, q = min(((float(gkey[l, q]), l, q) for l in range(n_layers) for q in range(n_groups)))[1:]
            return {l: heads_of([q])}
        chosen = {}
        for l, kg in enumerate(groups):
            if kg:
                order = sorted(range(n_groups), key=lambda q: (float(gkey[l, q]), q))
                chosen[l] = heads_of(order[:kg])
        return chosen
    need = max(1, round_half_up(counts / g))
    spare = n_layers * (n_groups - 1)  # every layer keeps one group
    if need > spare:
        raise HeadgameError(
            f"--fraction {fraction} would prune {need} of {n_layers * n_groups} groups of {g} heads, emptying a layer "
            f"({n_layers} layers must keep one group each); lower --fraction to at most {spare * g / (n_layers * n_heads):.3f}"
        )
    # Greedy over the ascending keys is optimal here: "at most G-1 groups per layer" is a
    # partition matroid, and a matroid's greedy pick of k elements has the least total weight.
    flat = [(float(gkey[l, q]), l, q) for l in range(n_layers) for q in range(n_groups)]
    picked, _ = greedy_keep_one(flat, {l: n_groups for l in range(n_layers)}, need)
    return {l: heads_of(v) for l, v in sorted(picked.items())}


def select(key: np.ndarray, fraction: float, *, selection: str = "head", group_size: int = 1, per_layer: bool = False,
           rounding: str = "nearest") -> dict[int, list[int]]:
    """Heads to prune by ``selection``: single query heads (:func:`select_heads`) or whole GQA groups (:func:`select_groups`)."""
    if selection not in SELECTIONS:
        raise HeadgameError(f"--selection {selection} is not valid; choose one of {', '.join(SELECTIONS)}")
    if selection == "head":
        return select_heads(key, fraction, per_layer=per_layer, rounding=rounding)
    if group_size == 1:
        raise HeadgameError(
            "--selection group needs grouped-query attention (several query heads per KV head); this model has one KV head "
            "per query head, use --selection head"
        )
    return select_groups(key, fraction, group_size, per_layer=per_layer, rounding=rounding)
