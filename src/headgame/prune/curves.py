"""Pruning curves: perplexity and measured speed-up against the share of heads pruned, per criterion
(``curves.json``, ``curves.png``). Random is a band: mean ± sd and min–max over its seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headgame.io import write_json_atomic
from headgame.prune.report import flat_metrics

METRICS = ("n_pruned", "kv_heads_removed", "flops_reduction_analytic", "measured_speedup", "flop_implied_speedup")


def curves(result: dict[str, Any]) -> dict[str, Any]:
    """``{"fractions": [...], "sets": [...], "base": {...}, "criteria": {name: {metric: [value per fraction]}}}``;
    random's values are ``{"mean", "sd", "n", "min", "max"}`` per fraction."""
    by_f = result["results_by_fraction"]
    fractions = sorted(by_f, key=float)
    sets = [s["name"] for s in result["data"]["perplexity_sets"]]
    base = flat_metrics({**result["base"], "n_pruned": 0})
    cos = [f"cos_{s}" for s in sets if f"cos_{s}" in base]  # encoders: sentence-embedding cosine with the unpruned model
    metrics = list(METRICS) + [f"ppl_{s}" for s in sets] + [f"ppl_{s}_change" for s in sets] + cos
    names: list[str] = []
    for f in fractions:
        names += [n for n in by_f[f] if n not in names]
    out: dict[str, Any] = {}
    for name in names:
        rows: dict[str, list[Any]] = {m: [] for m in metrics}
        for f in fractions:
            res = by_f[f].get(name)
            values = {} if res is None else (res["summary"] if name == "random" else flat_metrics(res))
            for m in metrics:
                rows[m].append(values.get(m))
        if name == "random":
            rows["seeds"] = by_f[fractions[0]]["random"]["seeds"]
        out[name] = rows
    return {"model": result["model"]["spec"], "fractions": [float(f) for f in fractions], "sets": sets,
            "selection": result["budget"].get("selection", "head"), "iterative_step": result["budget"].get("iterative_step", 0.0),
            "base": {**{f"ppl_{s}": base.get(f"ppl_{s}") for s in sets}, **{k: base[k] for k in cos}}, "criteria": out,
            "notes": "one point per (criterion, fraction); perplexity of the pruned model; measured_speedup = median paired "
                     "base time / median pruned time of the forward pass (pruning.json notes); random: mean ± sd over its seeds"
                     + ("; cos_<set> (encoders): mean cosine of each sequence's mean-pooled sentence embedding with the "
                        "unpruned model's (1 = unchanged)" if cos else "")}


def _mean(v: Any) -> Any:
    return v.get("mean") if isinstance(v, dict) else v


def _has(c: dict[str, Any], key: str) -> bool:
    return any(_mean(v) is not None for rows in c["criteria"].values() for v in rows.get(key, []))


def _panels(c: dict[str, Any], top: Any, bottom: Any, key: str, xs: list[float]) -> None:
    """``key`` of every criterion against the fraction pruned (``top``) and the measured speed-up."""
    for name, rows in c["criteria"].items():
        vals = rows.get(key, [None] * len(xs))
        speed = rows["measured_speedup"]
        if name == "random":
            mean = [_mean(v) for v in vals]
            lo = [None if v is None or v.get("min") is None else v["min"] for v in vals]
            hi = [None if v is None or v.get("max") is None else v["max"] for v in vals]
            ok = [i for i, m in enumerate(mean) if m is not None and lo[i] is not None]
            top.fill_between([xs[i] for i in ok], [lo[i] for i in ok], [hi[i] for i in ok], color="0.8",
                             label=f"random, min–max of {len(rows.get('seeds', []))} seeds")
            top.plot([xs[i] for i in ok], [mean[i] for i in ok], color="0.4", ls="--", marker="o", label="random (mean)")
            pts = [(_mean(speed[i]), mean[i]) for i in ok if _mean(speed[i]) is not None]
            if pts:
                bottom.plot(*zip(*pts), color="0.4", ls="--", marker="o", label="random (mean)")
            continue
        ok = [i for i, v in enumerate(vals) if v is not None]
        line, = top.plot([xs[i] for i in ok], [vals[i] for i in ok], marker="o", label=name)
        pts = [(speed[i], vals[i]) for i in ok if speed[i] is not None]
        if pts:
            bottom.plot(*zip(*pts), marker="o", color=line.get_color(), label=name)


def plot_curves(c: dict[str, Any], path: Path) -> Path | None:
    """Per set: perplexity (log scale) against the fraction pruned and against the measured
    speed-up; for encoders also the sentence-embedding cosine with the unpruned model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = c["sets"]
    if not sets:
        return None
    # (key, y label, log scale) per pair of rows; a measure no model has is left out
    kinds = [("ppl_{s}", "{s} perplexity", True), ("cos_{s}", "{s} embedding cosine", False)]
    kinds = [k for k in kinds if any(_has(c, k[0].format(s=s)) for s in sets)] or kinds[:1]
    fig, axes = plt.subplots(2 * len(kinds), len(sets), figsize=(5.2 * len(sets), 4.2 * 2 * len(kinds)), squeeze=False)
    xs = [100 * f for f in c["fractions"]]
    for r, (key, ylabel, log) in enumerate(kinds):
        for j, s in enumerate(sets):
            top, bottom = axes[2 * r][j], axes[2 * r + 1][j]
            _panels(c, top, bottom, key.format(s=s), xs)
            b = c["base"].get(key.format(s=s))
            for ax in (top, bottom):
                if b:
                    ax.axhline(b, color="k", lw=0.8, ls=":", label="unpruned")
                if log:
                    ax.set_yscale("log")
                ax.set_ylabel(ylabel.format(s=s))
                ax.grid(alpha=0.3)
            top.set_xlabel("heads pruned (%)")
            bottom.set_xlabel("measured forward speed-up (×)")
            top.set_title(f"{c['model']} · {s}")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_curves(result: dict[str, Any], out: Path) -> list[Path]:
    c = curves(result)
    paths = [write_json_atomic(Path(out) / "curves.json", c)]
    png = plot_curves(c, Path(out) / "curves.png")
    return paths + ([png] if png else [])
