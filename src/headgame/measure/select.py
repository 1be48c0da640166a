"""Which heads to prune: rank by a criterion, global or per layer, keep at least one per layer.

The budget is ⌊fraction · H_total⌉ (round half up: 29 of 144 at 20 %),
ranked globally across layers by default; ``per_layer`` prunes ⌊fraction · H_ℓ⌉ in each layer
(``rounding="ceil"``: ⌈fraction · H_ℓ⌉, as the GT-FEP authors' code does: 3 of 12 heads at 20 %).
Ties break by (layer, head) order so that a ranking is reproducible.
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
    flat.sort()
    left = {l: n_heads for l in range(n_layers)}
    need = counts
    for _, l, h in flat:
        if need == 0:
            break
        if left[l] <= 1:  # keep at least one head per layer
            continue
        chosen.setdefault(l, []).append(h)
        left[l] -= 1
        need -= 1
    return {l: sorted(v) for l, v in sorted(chosen.items())}
