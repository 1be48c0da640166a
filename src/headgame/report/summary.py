"""Per-layer numbers of an analysis as presentable rows, and the terminal summary table.

The analysis dict (what ``analysis.json`` holds) is read defensively: any value may be
missing, ``None`` or NaN in odd cases, and every formatter here turns those into "—" rather
than raising. :func:`layer_rows` is the one place that pulls numbers out of the dict, so the
HTML table and the terminal table cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported lazily so that `import headgame.report` stays cheap
    from rich.console import Console
    from rich.table import Table

DASH = "—"


def as_float(x: Any) -> float:
    """``x`` as a float; ``None`` and anything that is not a number become NaN."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def fmt_num(x: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant figures, trailing zeros kept so columns align
    (0.1 → "0.100"); missing or non-finite values give "—"."""
    v = as_float(x)
    if not math.isfinite(v):
        return DASH
    return f"{v:#.{digits}g}".rstrip(".")


def fmt_delta(x: Any, digits: int = 3) -> str:
    """A signed difference to ``digits`` significant figures (4.88e-05 → "+4.88e-05", never
    "+0.0000"); missing or non-finite values give "—"."""
    v = as_float(x)
    if not math.isfinite(v):
        return DASH
    return f"{v + 0.0:+#.{digits}g}".rstrip(".")


def fmt_p(p: Any) -> str:
    """A p-value: three decimals, or scientific notation below 0.001; missing gives "—"."""
    v = as_float(p)
    if not math.isfinite(v):
        return DASH
    return f"{v:.1e}" if v < 1e-3 else f"{v:.3f}"


def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, Mapping) else None


@dataclass(frozen=True)
class LayerRow:
    """The scalar results of one analysed layer, with missing values as NaN / None."""

    layer: int
    gamma: float
    gamma_norm: float
    gamma_abs: float
    ldb: float
    poa_proxy: float
    k: int | None
    sizes: tuple[int, ...]
    p: float
    """One-sided Mann–Whitney p (within-coalition |G| > between-coalition |G|)."""
    p_note: str | None
    effect_size: float
    has_redundancy: bool
    redundancy_index: float
    l_abt_uniform: float
    l_abt_adaptive: float


def layer_row(layer: Mapping[str, Any], position: int = 0) -> LayerRow:
    """Pull the scalars of one layer entry; ``position`` stands in for a missing layer id."""
    coal = _get(layer, "coalitions") or {}
    sel = _get(layer, "selective_coordination") or {}
    red = _get(layer, "redundancy")
    k = _get(coal, "k")
    sizes = _get(coal, "sizes") or ()
    lid = _get(layer, "layer")
    note = _get(sel, "note")
    return LayerRow(
        layer=int(lid) if isinstance(lid, (int, float)) and math.isfinite(lid) else position,
        gamma=as_float(_get(layer, "gamma")),
        gamma_norm=as_float(_get(layer, "gamma_norm")),
        gamma_abs=as_float(_get(layer, "gamma_abs")),
        ldb=as_float(_get(layer, "ldb")),
        poa_proxy=as_float(_get(_get(layer, "poa_proxy"), "proxy")),
        k=int(k) if isinstance(k, (int, float)) and math.isfinite(k) else None,
        sizes=tuple(int(s) for s in sizes if isinstance(s, (int, float)) and math.isfinite(s)),
        p=as_float(_get(sel, "p")),
        p_note=str(note) if note is not None else None,
        effect_size=as_float(_get(sel, "effect_size")),
        has_redundancy=isinstance(red, Mapping),
        redundancy_index=as_float(_get(red, "redundancy_index")),
        l_abt_uniform=as_float(_get(red, "l_abt_uniform")),
        l_abt_adaptive=as_float(_get(red, "l_abt_adaptive")),
    )


def layer_rows(analysis: Mapping[str, Any]) -> list[LayerRow]:
    """One :class:`LayerRow` per entry of ``analysis["layers"]``, in order."""
    layers = _get(analysis, "layers") or []
    return [layer_row(layer, i) for i, layer in enumerate(layers)]


@dataclass(frozen=True)
class GammaStats:
    """Mean, max and min Γ over the analysed layers (NaN layers ignored)."""

    mean: float
    max: float
    max_layer: int | None
    min: float
    min_layer: int | None


def gamma_stats(rows: Sequence[LayerRow]) -> GammaStats:
    """Γ statistics over ``rows``; all NaN when no layer has a finite Γ."""
    finite = [r for r in rows if math.isfinite(r.gamma)]
    if not finite:
        return GammaStats(math.nan, math.nan, None, math.nan, None)
    hi = max(finite, key=lambda r: r.gamma)
    lo = min(finite, key=lambda r: r.gamma)
    mean = sum(r.gamma for r in finite) / len(finite)
    return GammaStats(mean, hi.gamma, hi.layer, lo.gamma, lo.layer)


def gamma_footer(stats: GammaStats) -> str:
    """One line: mean Γ and the layers of max and min Γ."""
    if stats.max_layer is None:
        return "no finite Γ in any layer"
    return (
        f"mean Γ = {fmt_num(stats.mean)} · max Γ = {fmt_num(stats.max)} (layer {stats.max_layer})"
        f" · min Γ = {fmt_num(stats.min)} (layer {stats.min_layer})"
    )


def _visible(n: int, max_rows: int) -> tuple[list[int], list[int]]:
    """Row positions before and after the ellipsis row (the second list is empty if none)."""
    if n <= max_rows:
        return list(range(n)), []
    shown = max(max_rows - 1, 2)  # one row is spent on the ellipsis
    head = (shown + 1) // 2
    return list(range(head)), list(range(n - (shown - head), n))


def summary_table(analysis: Mapping[str, Any], max_rows: int = 40) -> Table:
    """A compact per-layer rich table: layer, Γ, Γ_norm, k, Mann–Whitney p, redundancy.

    All layers are shown when there are at most ``max_rows``; otherwise the first and last
    few with one "…" row between them, ``max_rows`` rows in all. The max-Γ row is bold;
    :func:`print_summary` adds a footer line with mean Γ and the max / min layers.
    """
    from rich.table import Table

    rows = layer_rows(analysis)
    stats = gamma_stats(rows)
    with_red = any(r.has_redundancy for r in rows)
    model = _get(_get(analysis, "model"), "spec")
    n_tokens = _get(_get(analysis, "data"), "n_tokens")
    title = "head interaction by layer"
    if model:
        title += f" · {model}"
    if isinstance(n_tokens, (int, float)):
        title += f" · {int(n_tokens):,} tokens"

    # the footer is printed below the table by print_summary: a caption would wrap to the
    # table's narrow width
    table = Table(title=title, header_style="bold")
    table.add_column("layer", justify="right")
    table.add_column("Γ", justify="right")
    table.add_column("Γ_norm", justify="right")
    table.add_column("k", justify="right")
    table.add_column("MW p", justify="right")
    if with_red:
        table.add_column("redundancy", justify="right")

    head, tail = _visible(len(rows), max_rows)
    for pos in head + tail:
        if tail and pos == tail[0]:
            table.add_row(*(["…"] * len(table.columns)), style="dim")
        r = rows[pos]
        cells = [
            str(r.layer),
            fmt_num(r.gamma),
            fmt_num(r.gamma_norm, 3),
            str(r.k) if r.k is not None else DASH,
            fmt_p(r.p),
        ]
        if with_red:
            cells.append(fmt_num(r.redundancy_index, 3))
        style = "bold" if r.layer == stats.max_layer else None
        table.add_row(*cells, style=style)
    return table


def print_summary(analysis: Mapping[str, Any], console: Console | None = None) -> None:
    """Print :func:`summary_table` to ``console`` (a fresh stdout console by default)."""
    if console is None:
        from rich.console import Console

        console = Console()
    console.print(summary_table(analysis))
    rows = layer_rows(analysis)
    console.print(gamma_footer(gamma_stats(rows)))
    if any(r.has_redundancy for r in rows):
        console.print(REDUNDANCY_NOTE, markup=False, highlight=False)


REDUNDANCY_NOTE = ("redundancy = redundancy index: mean over head pairs of mean |C_ij|, their z-scored output "
                   "cross-correlation (docs/formulas.md#redundancy)")
