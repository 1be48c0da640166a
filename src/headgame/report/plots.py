"""PNG figures of an analysis: G heatmaps, Γ by layer, ΔG between two analyses, redundancy.

Every function returns PNG bytes and touches no global matplotlib state: figures are built
with :class:`matplotlib.figure.Figure` and rendered by the Agg canvas, and matplotlib is
imported inside the functions so that importing this module costs nothing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from headgame.errors import HeadgameError
from headgame.report.summary import as_float, fmt_delta, fmt_num, fmt_p, layer_rows

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
PANEL_IN = 3.3  # inches per heatmap panel; with DPI that is ~360 px, readable for ≤ 32 heads
MISSING = "#d9d9d9"  # grey for the masked diagonal and for missing entries
MATRIX_LABELS = {"G": "G = ω ⊙ ρ", "omega": "ω (weight coupling)", "rho": "ρ (gradient coupling)"}


def _figure(width: float, height: float, layout: str = "constrained") -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # "compressed" is constrained layout that also closes the gaps fixed-aspect images leave.
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" stamp: the bytes then depend only on the data and the matplotlib version.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def _by_id(layers: Sequence[Mapping[str, Any]], layer_ids: Sequence[int]) -> list[Mapping[str, Any]]:
    index = {layer.get("layer", i): layer for i, layer in enumerate(layers)}
    missing = [lid for lid in layer_ids if lid not in index]
    if missing:
        have = sorted(index)
        span = f"{have[0]}..{have[-1]}" if have else "none"
        raise HeadgameError(
            f"layer(s) {missing} were not analysed (analysed layers: {span}); "
            "choose heatmap layers from the analysed ones"
        )
    if not layer_ids:
        raise HeadgameError("no layers to plot; give at least one layer id")
    return [index[lid] for lid in layer_ids]


def _matrix(layer: Mapping[str, Any], key: str) -> np.ndarray | None:
    """The H×H matrix at ``key`` (dotted paths such as ``redundancy.aligned_corr`` allowed)."""
    obj: Any = layer
    for part in key.split("."):
        obj = obj.get(part) if isinstance(obj, Mapping) else None
    if obj is None:
        return None
    try:
        m = np.array(obj, dtype=float)  # None entries become NaN
    except (TypeError, ValueError):
        return None
    return m if m.ndim == 2 and m.shape[0] == m.shape[1] and m.size else None


def _coalition_order(layer: Mapping[str, Any], h: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Head order grouping coalition members together, and the labels in that order."""
    labels = (layer.get("coalitions") or {}).get("labels")
    if not isinstance(labels, Sequence) or len(labels) != h:
        return np.arange(h), None
    lab = np.array([as_float(x) for x in labels])
    if not np.isfinite(lab).all():
        return np.arange(h), None
    order = np.argsort(lab, kind="stable")
    return order, lab[order].astype(int)


def _ticks(ax: Axes, order: np.ndarray, labels: np.ndarray | None, heads: Sequence[int] | None = None) -> None:
    """Head ticks; ``heads`` names row i's head in the unpruned model (a pruned layer's G is smaller)."""
    import matplotlib

    h = len(order)
    step = max(1, math.ceil(h / 16))  # keep tick labels legible for wide layers
    pos = np.arange(0, h, step)
    names = [str(int(heads[order[i]] if heads is not None and len(heads) == h else order[i])) for i in pos]
    fs = 8 if h <= 16 else 6.5
    ax.set_xticks(pos, names, fontsize=fs, rotation=90 if h > 12 else 0)
    ax.set_yticks(pos, names, fontsize=fs)
    ax.tick_params(length=2, pad=1)
    if labels is None:
        return
    palette = matplotlib.colormaps["tab10"]
    for axis in (ax.get_xticklabels(), ax.get_yticklabels()):
        for txt, i in zip(axis, pos):
            txt.set_color(palette(int(labels[i]) % 10))
    # Thin lines between coalitions.
    for b in np.flatnonzero(np.diff(labels)) + 0.5:
        ax.axhline(b, color="black", lw=1.0)
        ax.axvline(b, color="black", lw=1.0)


def _tidy(*axes: Axes) -> None:
    """Light grid, no top/right spines, integer layer ticks on the x axis."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3, lw=0.6)
        ax.spines[["top", "right"]].set_visible(False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _panel_grid(n: int) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` square heatmap panels, three or four to a row."""
    ncols = min(n, 3 if n <= 6 else 4)
    nrows = math.ceil(n / ncols)
    fig = _figure(PANEL_IN * ncols + 0.9, (PANEL_IN + 0.45) * nrows, layout="compressed")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def _blank(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_interaction_heatmaps(
    layers: list[dict],
    layer_ids: list[int],
    key: str = "G",
    *,
    by_coalition: bool = True,
    mask_diagonal: bool = True,
    vmax: float = 1.0,
) -> bytes:
    """A grid of H×H heatmaps of ``layer[key]`` for the layers numbered ``layer_ids`` (PNG).

    Colours are diverging and fixed to [−1, 1] (G, ω and ρ are cosines or their product) with
    one shared colourbar; a smaller ``vmax`` zooms to [−vmax, vmax] for weakly coupled
    models. With ``by_coalition`` heads are reordered so that each coalition forms a block;
    tick labels keep the original head index, are coloured by coalition, and thin lines
    separate the blocks. The unit diagonal is greyed by ``mask_diagonal`` so the colour
    range serves the off-diagonal couplings that Γ measures.
    """
    import matplotlib

    chosen = _by_id(layers, layer_ids)
    fig, axes = _panel_grid(len(chosen))
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=MISSING)
    image = None
    for ax, layer in zip(axes, chosen):
        row = layer_rows({"layers": [layer]})[0]
        m = _matrix(layer, key)
        ax.set_title(f"layer {row.layer} · Γ = {fmt_num(row.gamma, 3)}", fontsize=10.5, pad=4)
        if m is None:
            _blank(ax, f"no {key}")
            continue
        order, labels = _coalition_order(layer, len(m)) if by_coalition else (np.arange(len(m)), None)
        shown = m[np.ix_(order, order)]
        if mask_diagonal:
            np.fill_diagonal(shown, np.nan)
        image = ax.imshow(shown, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        _ticks(ax, order, labels, layer.get("heads"))
        sub = f"k = {row.k} · MW p = {fmt_p(row.p)}" if labels is not None else "head index"
        ax.set_xlabel(sub, fontsize=8.5, labelpad=2)
    if image is not None:
        extend = "both" if vmax < 1.0 else "neither"
        cbar = fig.colorbar(image, ax=axes, shrink=0.85, aspect=30, pad=0.02, extend=extend)
        cbar.set_label(MATRIX_LABELS.get(key, key), fontsize=9)
    return _png(fig)


def _mark_extreme(ax: Axes, x: np.ndarray, y: np.ndarray, which: str) -> int | None:
    """Mark and label the max or min of ``y``; returns its index (``None`` if all NaN)."""
    if not np.isfinite(y).any():
        return None
    i = int(np.nanargmax(y) if which == "max" else np.nanargmin(y))
    colour = "#c0392b" if which == "max" else "#2471a3"
    # Labels at the ends of the axis grow inwards so they are never clipped.
    ha = "left" if i == 0 and len(x) > 1 else "right" if i == len(x) - 1 and len(x) > 1 else "center"
    ax.plot([x[i]], [y[i]], marker="^" if which == "max" else "v", ms=10, color=colour, zorder=5)
    ax.annotate(f"{which} Γ = {fmt_num(y[i], 3)}\nlayer {int(x[i])}", (x[i], y[i]),
                xytext=(0, 12 if which == "max" else -14), textcoords="offset points", ha=ha,
                va="bottom" if which == "max" else "top", fontsize=8.5, color=colour)
    return i


def plot_gamma_by_layer(layers: list[dict]) -> bytes:
    """Γ per layer (top, max and min marked) and Γ_norm, Γ_abs per layer (bottom) (PNG)."""
    rows = layer_rows({"layers": layers})
    x = np.array([r.layer for r in rows], dtype=float)
    fig = _figure(8.5, 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    g = np.array([r.gamma for r in rows])
    top.plot(x, g, "-o", color="#34495e", ms=4, lw=1.6, label="Γ = ‖G − I‖_F")
    if np.count_nonzero(np.isfinite(g)) > 1:
        _mark_extreme(top, x, g, "min")
    _mark_extreme(top, x, g, "max")
    top.set_ylabel("Γ")
    top.set_title("Head interaction strength by layer", fontsize=11)
    top.legend(loc="best", fontsize=8.5, frameon=False)
    if np.isfinite(g).any():
        lo, hi = np.nanmin(g), np.nanmax(g)
        pad = 0.25 * (hi - lo) if hi > lo else 0.5 * max(abs(hi), 1e-3)
        top.set_ylim(lo - pad, hi + pad)  # room for the max / min annotations
    bottom.plot(x, [r.gamma_norm for r in rows], "-o", ms=3, lw=1.4, color="#16a085",
                label="Γ_norm = Γ / √(H(H−1))  (RMS off-diagonal)")
    bottom.plot(x, [r.gamma_abs for r in rows], "-s", ms=3, lw=1.4, color="#d68910",
                label="Γ_abs = mean |G_ij|, i ≠ j")
    bottom.set_ylabel("normalised")
    bottom.set_xlabel("layer")
    bottom.legend(loc="best", fontsize=8.5, frameon=False)
    _tidy(top, bottom)
    return _png(fig)


def plot_matrix_delta(
    before: list[dict], after: list[dict], layer_ids: list[int], key: str = "G"
) -> bytes:
    """Heatmaps of ``after[key] − before[key]`` for the chosen layers (PNG).

    Heads stay in their original order (coalitions may differ between the two analyses); the
    colour range is symmetric, ±max|Δ| over all panels, so the panels compare directly.
    """
    import matplotlib

    pairs = list(zip(_by_id(before, layer_ids), _by_id(after, layer_ids)))
    deltas: list[np.ndarray | None] = []
    for b, a in pairs:
        mb, ma = _matrix(b, key), _matrix(a, key)
        deltas.append(ma - mb if mb is not None and ma is not None and mb.shape == ma.shape else None)
    finite = [np.nanmax(np.abs(d)) for d in deltas if d is not None and np.isfinite(d).any()]
    vmax = float(max(finite)) if finite and max(finite) > 0 else 1.0
    fig, axes = _panel_grid(len(pairs))
    cmap = matplotlib.colormaps["PuOr_r"].with_extremes(bad=MISSING)
    image = None
    for ax, (b, a), d, lid in zip(axes, pairs, deltas, layer_ids):
        dg = as_float(a.get("gamma")) - as_float(b.get("gamma"))
        ax.set_title(f"layer {lid} · ΔΓ = {fmt_delta(dg)}", fontsize=10.5, pad=4)  # as in the compare table
        if d is None:
            _blank(ax, f"no comparable {key}")
            continue
        image = ax.imshow(d, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        _ticks(ax, np.arange(len(d)), None)
        ax.set_xlabel("head index", fontsize=8.5, labelpad=2)
    if image is not None:
        cbar = fig.colorbar(image, ax=axes, shrink=0.85, aspect=30, pad=0.02)
        cbar.set_label(f"Δ{key} (after − before)", fontsize=9)
    return _png(fig)


def plot_redundancy_by_layer(layers: list[dict]) -> bytes | None:
    """Redundancy index (top) and L_ABT uniform / adaptive (bottom) by layer, or ``None``
    when no layer carries redundancy results (PNG)."""
    rows = [r for r in layer_rows({"layers": layers}) if r.has_redundancy]
    if not rows:
        return None
    x = np.array([r.layer for r in rows], dtype=float)
    fig = _figure(8.5, 4.8)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(x, [r.redundancy_index for r in rows], width=0.7, color="#8e44ad", alpha=0.85)
    top.set_ylabel("redundancy index")
    top.set_title("Redundancy between heads by layer", fontsize=11)
    bottom.plot(x, [r.l_abt_uniform for r in rows], "-o", ms=3, lw=1.4, color="#7f8c8d",
                label="L_ABT, uniform weights")
    bottom.plot(x, [r.l_abt_adaptive for r in rows], "-s", ms=3, lw=1.4, color="#c0392b",
                label="L_ABT, adaptive weights w_ij(G)")
    bottom.set_ylabel("L_ABT")
    bottom.set_xlabel("layer")
    bottom.legend(loc="best", fontsize=8.5, frameon=False)
    _tidy(top, bottom)
    return _png(fig)


def choose_heatmap_layers(n_layers: int, gammas: Sequence[float | None], max_layers: int = 6) -> list[int]:
    """Positions worth a heatmap: max-Γ, min-Γ, first, last and middle (``n_layers // 2``).

    Returns them sorted and unique, at most ``max_layers``; when that cuts, the earlier ones
    in the order above win. Positions index ``gammas`` (they are layer numbers when every
    layer was analysed). NaN / ``None`` Γ values are ignored for max and min.
    """
    if n_layers <= 0 or max_layers <= 0:
        return []
    if len(gammas) != n_layers:
        raise ValueError(f"got {len(gammas)} Γ values for {n_layers} layers; pass one per layer")
    g = np.array([as_float(v) for v in gammas])
    candidates: list[int] = []
    if np.isfinite(g).any():
        candidates += [int(np.nanargmax(g)), int(np.nanargmin(g))]
    candidates += [0, n_layers - 1, n_layers // 2]
    chosen: list[int] = []
    for c in candidates:
        if c not in chosen and len(chosen) < max_layers:
            chosen.append(c)
    return sorted(chosen)
