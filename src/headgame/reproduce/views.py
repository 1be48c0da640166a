"""The statistics of the gt-fep reproduction, pure (numpy and scipy only).

* :func:`wilson_interval` and :func:`sign_statistics`: the sign of the triple dividends of one
  layer (or of a model pooled), with a Wilson 95 % interval of the share below 0 beside the
  bootstrap one ``headgame fep`` computes over sequences.
* :func:`two_views`: two views of the same heads. GT-FEP sees heads through the information
  their argmax-key symbols share (pair dividends = mutual information I(X_i; X_j)); GAME-LoRA's
  interaction matrix G = ω ⊙ ρ sees them through their output weights and gradients. Per layer
  the Spearman rank correlation of |G_ij| with I(X_i; X_j) over the pairs i < j, and over the
  whole model the overlap of the heads one view calls redundant with those the other calls
  coupled (Jaccard index and the hypergeometric p of an overlap at least that large).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from headgame.errors import HeadgameError

Z95 = 1.959963984540054
"""The two-sided 95 % standard normal quantile."""
NEAR_ZERO = 1e-9
"""Triple dividends with |D| below this (bits) are numerically zero: their sign is noise."""


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial share k/n (NaN for n = 0)."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n or n < 0 or not 0 <= k <= max(n, 0):
        raise HeadgameError(f"a Wilson interval needs integers 0 <= k <= n, got k={k}, n={n}; count the successes k of n trials")
    if n == 0:
        return math.nan, math.nan
    p, z2 = k / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _num(x: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if x is None or isinstance(x, bool):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def wilcoxon_p(values: Sequence[float], alternative: str) -> tuple[float | None, float | None]:
    """(statistic, p) of scipy's signed-rank test of ``values`` against 0; (None, None) when every value is 0."""
    v = np.asarray(values, float)
    if v.size == 0 or not np.any(v != 0):
        return None, None
    res = sps.wilcoxon(v, alternative=alternative, zero_method="wilcox")
    return _num(res.statistic), _num(res.pvalue)


def sign_statistics(summary: Mapping[str, Any], values: Sequence[float] | None = None,
                    bootstrap: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """One row of the triple-sign table.

    ``summary`` is fep.json's summary of the triples (n, mean, median, frac_negative and the
    one-sided Wilcoxon p, reused as they are); ``values`` the triple dividends themselves (for
    the two-sided test, and the count of numerically-zero triples); ``bootstrap`` fep.json's
    intervals over sequences (``triples_ci``). The Wilson interval treats the triples as
    independent, which they are not (they share heads): the bootstrap interval is the honest one."""
    n = int(summary.get("n") or 0)
    frac = _num(summary.get("frac_negative"))
    k = round(frac * n) if frac is not None else 0
    lo, hi = wilson_interval(k, n)
    row: dict[str, Any] = {
        "n": n, "mean": _num(summary.get("mean")), "median": _num(summary.get("median")), "n_negative": k,
        "frac_negative": frac, "wilson_low": _num(lo), "wilson_high": _num(hi),
        "wilcoxon_stat": _num(summary.get("wilcoxon_stat")), "wilcoxon_p_less": _num(summary.get("wilcoxon_p")),
    }
    boot = bootstrap or {}
    for key in ("frac_negative", "mean"):
        ci = boot.get(key) or [None, None]
        row[f"bootstrap_{key}_low"], row[f"bootstrap_{key}_high"] = _num(ci[0]), _num(ci[1])
    if values is not None:
        v = np.asarray(values, float)
        row["n_near_zero"] = int((np.abs(v) < NEAR_ZERO).sum())
        if row["wilcoxon_p_less"] is None:  # fep.json gives none when every triple is 0
            row["wilcoxon_stat"], row["wilcoxon_p_less"] = wilcoxon_p(v, "less")
        row["wilcoxon_p_two_sided"] = wilcoxon_p(v, "two-sided")[1]
    return row


def fep_summary(fj: Mapping[str, Any], low: Mapping[str, Any]) -> dict[str, Any]:
    """The sign table of one model from its fep.json and the triple values (``low``: the stage's
    dividends23.json, ``{"layers": {layer: {"triples": [[i, j, k, value, lo, hi], ...]}}}``)."""
    rows, pooled = [], []
    for lay in fj["layers"]:
        values = [t[3] for t in low["layers"].get(str(lay["layer"]), {}).get("triples", [])]
        pooled += values
        rows.append({"layer": lay["layer"], **sign_statistics(lay["triples"], values, lay.get("triples_ci"))})
    s, nash = fj["summary"], fj.get("epsilon_nash") or {}
    return {
        "model": fj["model"]["spec"], "n_layers": fj["model"]["n_layers"], "n_heads": fj["model"]["n_heads"],
        "data": {k: fj["data"].get(k) for k in ("source", "n_sequences", "n_tokens", "n_observations", "seq_len", "alphabet",
                                                 "saturation_bits")},
        "layers": rows, "pooled": sign_statistics(s["triples"], pooled),
        "layers_majority_negative_and_median_below_0": s["layers_majority_negative_and_median_below_0"],
        "pairs_all_nonnegative": s["pairs_all_nonnegative"], "pairs_min_bits": _num(s["pairs_min_bits"]),
        "epsilon_nash": {k: nash.get(k) for k in ("epsilon_bits", "epsilon_relative", "n_pruned", "spearman_rho", "spearman_p")},
        "warnings": fj.get("warnings", []),
        "notes": "n, mean, median, share < 0, the one-sided Wilcoxon (H1: median < 0) and the bootstrap intervals over sequences "
                 "are fep.json's; the Wilson interval and the two-sided Wilcoxon are computed from the triple values",
    }


# ------------------------------------------------------------------ two views of the same heads
def _square(m: Any, what: str, layer: Any) -> np.ndarray:
    a = np.asarray(m, float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise HeadgameError(f"layer {layer}: {what} is not a square head-by-head matrix (shape {a.shape}); pass one H x H matrix per layer")
    if not np.isfinite(a).all():
        raise HeadgameError(f"layer {layer}: {what} holds NaN or infinity; rerun the analysis that produced it with more tokens")
    return a


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's ρ with its two-sided p and n; NaN (with a note) for fewer than 3 pairs or a constant input."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = int(x.size)
    if n < 3:
        return {"n": n, "rho": None, "p": None, "note": f"{n} pair(s): too few for a rank correlation"}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": n, "rho": None, "p": None, "note": "one view is constant over the pairs: no ranks to correlate"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.spearmanr(x, y)
    return {"n": n, "rho": _num(res.statistic), "p": _num(res.pvalue)}


def top_k(scores: Sequence[float], k: int, *, highest: bool) -> list[int]:
    """Indices of the k highest (or lowest) scores; ties go to the lower index."""
    s = np.asarray(scores, float)
    if not 0 <= k <= s.size:
        raise HeadgameError(f"cannot pick {k} of {s.size} heads; choose k between 0 and {s.size}")
    order = np.lexsort((np.arange(s.size), -s if highest else s))
    return sorted(int(i) for i in order[:k])


def overlap(a: Sequence[int], b: Sequence[int], n: int) -> dict[str, Any]:
    """|A ∩ B|, the Jaccard index and P(X ≥ |A ∩ B|) for X ~ Hypergeometric(n, |B|, |A|): the
    chance that |A| heads drawn at random from ``n`` hit at least as many of B."""
    sa, sb = set(a), set(b)
    if len(sa) != len(a) or len(sb) != len(b) or any(not 0 <= i < n for i in sa | sb):
        raise HeadgameError(f"head sets must hold distinct indices in 0..{n - 1}; got {sorted(a)} and {sorted(b)}")
    inter, union = len(sa & sb), len(sa | sb)
    p = float(sps.hypergeom.sf(inter - 1, n, len(sb), len(sa))) if n else None
    return {"n_heads": n, "k_a": len(sa), "k_b": len(sb), "overlap": inter, "jaccard": inter / union if union else None,
            "expected_overlap": len(sa) * len(sb) / n if n else None, "p_hypergeom": _num(p)}


def _pairs(m: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(m.shape[0], k=1)
    return m[i, j]


def two_views(coupling: Mapping[Any, Any], mi: Mapping[Any, Any], fep: Mapping[Any, Sequence[float]], *,
              fraction: float = 0.2) -> dict[str, Any]:
    """Compare the coupling view (G per layer, from analyze) with the information view (the pair
    dividends I(X_i; X_j) as an H x H matrix per layer, and the fep score m_i per head, from fep).

    Per layer: Spearman ρ of |G_ij| against I(X_i; X_j), i < j; pooled: the same over every pair of
    every layer. Over the model's N heads, with k = max(1, round(fraction · N)): the coupled heads
    (top k by Σ_{j≠i} |G_ij|) against the redundant ones, by summed MI (top k by Σ_{j≠i} I(X_i; X_j))
    and by the fep score (the k lowest m_i, the heads GT-FEP prunes first)."""
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise HeadgameError(f"the two-views fraction {fraction} is outside (0, 1); pass e.g. 0.2")
    keys = {str(k): k for k in coupling}
    layers = sorted(set(keys) & {str(k) for k in mi} & {str(k) for k in fep}, key=lambda s: (len(s), s))
    if not layers:
        raise HeadgameError("the coupling and information views share no layer; run analyze and fep with --layers all on the same model")
    by = lambda d: {str(k): v for k, v in d.items()}  # noqa: E731
    mi_s, fep_s = by(mi), by(fep)
    rows, all_g, all_mi = [], [], []
    heads: list[tuple[str, int]] = []
    row_g, row_mi, scores = [], [], []
    for layer in layers:
        g = _square(coupling[keys[layer]], "G", layer)
        m = _square(mi_s[layer], "the mutual-information matrix", layer)
        f = np.asarray(fep_s[layer], float)
        if g.shape != m.shape or f.shape != (g.shape[0],):
            raise HeadgameError(f"layer {layer}: G has {g.shape[0]} heads, the dividends {m.shape[0]}, the fep scores {f.size}; "
                                "run analyze and fep on the same (unpruned) model")
        if not np.isfinite(f).all():
            raise HeadgameError(f"layer {layer}: the fep scores hold NaN or infinity; rerun fep with more tokens")
        ag = np.abs(g)
        x, y = _pairs(ag), _pairs(m)
        rows.append({"layer": int(layer) if layer.lstrip("-").isdigit() else layer, **spearman(x, y)})
        all_g.append(x)
        all_mi.append(y)
        off = ~np.eye(g.shape[0], dtype=bool)
        row_g += list((ag * off).sum(1))
        row_mi += list((m * off).sum(1))
        scores += list(f)
        heads += [(layer, h) for h in range(g.shape[0])]
    n = len(heads)
    k = max(1, int(math.floor(fraction * n + 0.5)))
    coupled = top_k(row_g, k, highest=True)
    redundant_mi = top_k(row_mi, k, highest=True)
    redundant_fep = top_k(scores, k, highest=False)
    name = lambda idx: [f"{heads[i][0]}.{heads[i][1]}" for i in idx]  # noqa: E731  "layer.head"
    return {
        "layers": rows,
        "pooled": spearman(np.concatenate(all_g), np.concatenate(all_mi)),
        "fraction": float(fraction), "k": k, "n_heads": n,
        "coupled": name(coupled),
        "overlaps": [
            {"redundant_by": "summed MI (top k)", "redundant": name(redundant_mi), **overlap(redundant_mi, coupled, n)},
            {"redundant_by": "fep score m_i (lowest k)", "redundant": name(redundant_fep), **overlap(redundant_fep, coupled, n)},
        ],
        "notes": "ρ: Spearman of |G_ij| (analyze) against I(X_i; X_j) (fep pair dividends) over the pairs i < j of a layer, two-sided p; "
                 "pairs share heads, so p is descriptive. Overlap: coupled = top k heads of the model by Σ_{j≠i}|G_ij|; "
                 "p = P(overlap ≥ observed) when k heads are drawn at random (hypergeometric); ties go to the lower layer.head.",
    }


# ------------------------------------------------------------------ pruning.json, read
def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return d


def _less_one(x: Any) -> float | None:
    x = _num(x)
    return None if x is None else x - 1.0


def prune_metrics(res: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of one pruned (or the base) model in pruning.json, named for what they count:
    FLOPs of the whole model and of the attention blocks only (analytic, and FlopCounterMode), the
    measured forward speed-up with the range of its paired rounds, the FLOP-implied one, and the
    perplexity of every set with its change against the unpruned model."""
    fw = _get(res, "throughput", "forward") or {}
    pairs = [b / t for b, t in zip(fw.get("base_times_s") or [], fw.get("times_s") or []) if t]
    out: dict[str, Any] = {
        "n_pruned": res.get("n_pruned", 0),
        "flops_whole_analytic": _num(_get(res, "flops", "analytic", "reduction_total")),
        "flops_attention_analytic": _num(_get(res, "flops", "analytic", "reduction_attention")),
        "flops_whole_measured": _num(_get(res, "flops", "measured", "reduction_total")),
        "flops_attention_measured": _num(_get(res, "flops", "measured", "reduction_attention")),
        "measured_speedup": _num(fw.get("measured_speedup")), "flop_implied_speedup": _num(fw.get("flop_implied_speedup")),
        "throughput_gain": _less_one(fw.get("measured_speedup")), "flop_implied_gain": _less_one(fw.get("flop_implied_speedup")),
        "speedup_paired_min": _num(min(pairs)) if pairs else None, "speedup_paired_max": _num(max(pairs)) if pairs else None,
    }
    for name, p in (res.get("perplexity") or {}).items():
        out[f"ppl_{name}"] = _num(p.get("ppl")) if p.get("available") else None
        out[f"ppl_{name}_change"] = _num(p.get("change_rel")) if p.get("available") else None
        if p.get("embedding"):  # encoders: sentence-embedding cosine with the unpruned model
            out[f"cos_{name}"] = _num(p["embedding"].get("cosine_mean"))
    return out


def _spread(values: list[Any]) -> dict[str, Any]:
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "sd": None, "n": 0, "min": None, "max": None}
    arr = np.asarray(v, float)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else None, "n": int(arr.size),
            "min": float(arr.min()), "max": float(arr.max())}


def prune_points(pruning: Mapping[str, Any]) -> dict[str, Any]:
    """Every (criterion, fraction) point of a prune run; random: mean, sd, n, min and max over its seeds."""
    by_f = pruning.get("results_by_fraction") or {f"{pruning['budget']['fraction']:g}": pruning["results"]}
    points = []
    for f in sorted(by_f, key=float):
        for name, res in by_f[f].items():
            if name == "random":
                runs = [prune_metrics(r) for r in res.get("runs", [])]
                keys = list(runs[0]) if runs else []
                points.append({"criterion": name, "fraction": float(f), "seeds": res.get("seeds"),
                               **{k: _spread([r.get(k) for r in runs]) for k in keys}})
            else:
                points.append({"criterion": name, "fraction": float(f), **prune_metrics(res)})
    base = pruning["base"]
    sets = [s["name"] for s in _get(pruning, "data", "perplexity_sets") or []]
    return {
        "primary": pruning.get("primary"), "fractions": sorted(float(f) for f in by_f), "sets": sets,
        "base": {"perplexity": {s: {k: base["perplexity"][s].get(k) for k in ("available", "kind", "ppl", "n_tokens", "reason", "embedding")}
                                for s in base.get("perplexity", {})},
                 "flops_analytic": _get(base, "flops", "analytic", "total"), "flops_attention_analytic": _get(base, "flops", "analytic", "attention"),
                 "flops_seq_len": _get(base, "flops", "analytic", "seq_len"),
                 "tokens_per_s": _num(_get(base, "throughput", "forward", "tokens_per_s"))},
        "perplexity_sets": _get(pruning, "data", "perplexity_sets"), "device": pruning.get("device"),
        "points": points,
        "notes": {k: v for k, v in (pruning.get("notes") or {}).items() if k in ("flops", "throughput", "perplexity", "positions")},
    }


def heal_summary(pruning: Mapping[str, Any]) -> dict[str, Any]:
    """The healing of a prune run: per set the perplexity of the pruned and the unpruned model
    before and after the same LoRA tuning, the gap pruned/unpruned − 1 before and after."""
    healed = pruning.get("healed")
    if not healed:
        raise HeadgameError("this pruning.json has no healing results; run headgame prune with --heal-tokens N")
    rows = []
    for name, r in (healed.get("recovery") or {}).items():
        pb, ub = _num(r.get("pruned_before")), _num(r.get("unpruned_before"))
        rows.append({"set": name, "pruned_before": pb, "pruned_healed": _num(r.get("pruned_healed")), "unpruned_before": ub,
                     "unpruned_healed": _num(r.get("unpruned_healed")),
                     "gap_before": pb / ub - 1.0 if pb is not None and ub else None,
                     "gap_healed": _num(r.get("healed_pruned_over_healed_unpruned"))})
    runs = {label: {k: _get(healed, label, "summary", k) for k in ("tokens", "steps", "train_loss_first", "train_loss_last",
                                                                   "final_val_loss")} for label in ("pruned", "unpruned")}
    primary = pruning.get("primary")
    return {"tokens": healed.get("tokens"), "method": healed.get("method"), "data": healed.get("data"), "recovery": rows,
            "runs": runs, "criterion": primary, "fraction": _get(pruning, "budget", "fraction"),
            "at_fraction": prune_metrics((pruning.get("results") or {}).get(primary) or {}),
            "base": prune_points(pruning)["base"], "notes": healed.get("notes")}
