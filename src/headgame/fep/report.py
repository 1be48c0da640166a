"""Outputs of ``headgame fep``: tables (CSV or Parquet), JSON, PNG figures and an HTML section.

Every file is written atomically (``headgame.io``). Figures are built with matplotlib's
object API (no global state) and embedded in ``report.html`` as data URIs; the page's
``<section id="gt-fep">`` can be pasted into a larger report.
"""

from __future__ import annotations

import base64
import csv
import io
import math
import re
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from headgame.errors import HeadgameError
from headgame.io import write_bytes_atomic, write_json_atomic, write_text_atomic

DPI = 110


def _csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in columns})
    return buf.getvalue().encode("utf-8")


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(round(v, 10))
    return "" if v is None else v


def write_table(rows: list[dict], columns: list[str], path: Path, fmt: str) -> Path:
    """``rows`` as CSV, or Parquet (pandas + pyarrow) when ``fmt == 'parquet'``."""
    if fmt == "parquet":
        try:
            import pandas as pd
        except ImportError:
            raise HeadgameError("--format parquet needs pandas and pyarrow; pip install pandas pyarrow, or use --format csv") from None
        buf = io.BytesIO()
        try:
            pd.DataFrame(rows, columns=columns).to_parquet(buf, index=False)
        except ImportError:
            raise HeadgameError("--format parquet needs pyarrow; pip install pyarrow, or use --format csv") from None
        return write_bytes_atomic(path.with_suffix(".parquet"), buf.getvalue())
    return write_bytes_atomic(path.with_suffix(".csv"), _csv_bytes(rows, columns))


def layer_rows(result: Mapping[str, Any]) -> list[dict]:
    rows = []
    for lay in result.get("layers", []):
        t = lay["triples"]
        ci = lay.get("triples_ci", {}).get("frac_negative", [math.nan, math.nan])
        rows.append({
            "layer": lay["layer"], "n_obs": lay["n_obs"], "n_heads": lay["n_heads"],
            "entropy_mean_bits": lay["entropy_mean_bits"], "pair_mean_bits": lay["pair_mean_bits"],
            "pair_min_bits": lay["pair_min_bits"], "n_triples": t["n"], "triple_mean_bits": t["mean"],
            "triple_median_bits": t["median"], "frac_negative": t["frac_negative"],
            "frac_negative_ci_low": ci[0], "frac_negative_ci_high": ci[1],
            "wilcoxon_p_less": t["wilcoxon_p"], "joint_entropy_bits": lay["joint_entropy_bits"],
        })
    return rows


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def plot_dividend_histograms(infos: Mapping[int, Any]) -> bytes:
    """Pairwise (MI) and triple (interaction information) dividends pooled over layers."""
    pairs = np.concatenate([i.pairs for i in infos.values()])
    trips = np.concatenate([i.triples for i in infos.values()])
    fig = _figure(9.0, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.hist(pairs, bins=60, color="#4c72b0")
    ax1.set_title(f"pair dividends: mutual information $I(X_i; X_j)$ (n={pairs.size})", fontsize=10)
    ax1.set_xlabel("bits")
    if trips.size:
        ax2.hist(trips, bins=60, color="#c44e52")
        ax2.axvline(0, color="black", lw=1)
        ax2.set_title(f"triple dividends: interaction information (n={trips.size}, {100 * (trips < 0).mean():.0f}% < 0)", fontsize=10)
    ax2.set_xlabel("bits (negative = redundancy)")
    for ax in (ax1, ax2):
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(alpha=0.3, lw=0.6)
    return _png(fig)


def plot_triples_by_layer(result: Mapping[str, Any]) -> bytes:
    rows = layer_rows(result)
    layers = [r["layer"] for r in rows]
    frac = np.array([r["frac_negative"] for r in rows], float)
    lo = np.array([r["frac_negative_ci_low"] for r in rows], float)
    hi = np.array([r["frac_negative_ci_high"] for r in rows], float)
    mean = np.array([r["triple_mean_bits"] for r in rows], float)
    fig = _figure(9.0, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(layers, frac, color="#c44e52")
    if np.isfinite(lo).any():
        ax1.errorbar(layers, frac, yerr=[np.clip(frac - lo, 0, None), np.clip(hi - frac, 0, None)], fmt="none", ecolor="black", lw=0.8)
    ax1.axhline(0.5, color="grey", ls="--", lw=1)
    ax1.set_ylim(0, 1)
    ax1.set_title("share of triple dividends < 0 (95% CI)", fontsize=10)
    ax1.set_xlabel("layer")
    ax2.bar(layers, mean, color="#8172b2")
    ax2.axhline(0, color="black", lw=1)
    ax2.set_title("mean triple dividend (bits)", fontsize=10)
    ax2.set_xlabel("layer")
    for ax in (ax1, ax2):
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(alpha=0.3, lw=0.6)
    return _png(fig)


def plot_co_membership(infos: Mapping[int, Any]) -> bytes | None:
    chains = [(l, i.chain) for l, i in sorted(infos.items()) if i.chain is not None]
    if not chains:
        return None
    picks = sorted({chains[0][0], chains[len(chains) // 2][0], chains[-1][0]})
    sel = [(l, c) for l, c in chains if l in picks]
    fig = _figure(3.3 * len(sel) + 0.6, 3.7)
    axes = np.atleast_1d(fig.subplots(1, len(sel)))
    im = None
    for ax, (l, c) in zip(axes, sel):
        im = ax.imshow(c.co_membership, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"layer {l}: P(same coalition)", fontsize=9)
        ax.set_xticks(range(c.co_membership.shape[0]))
        ax.set_yticks(range(c.co_membership.shape[0]))
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return _png(fig)


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return str(x)


FIGURE_TEXT = {
    "dividends_hist": "Harsanyi dividends pooled over layers: pairs are mutual information (≥ 0); triples are "
                      "interaction information, negative = redundancy (docs/formulas.md#dividends).",
    "triples_by_layer": "Per layer: the share of negative triple dividends (95 % bootstrap CI over sequences) and "
                        "their mean (docs/formulas.md#triple-summary, #bootstrap).",
    "coalitions": "Gibbs distribution over coalition structures (β = 1/bit, Metropolis–Hastings): probability that "
                  "two heads share a coalition (docs/formulas.md#mcmc).",
}
TABLE_COLUMNS = (  # (header, definition, docs/formulas.md anchor)
    ("mean entropy", "mean single-head entropy H(X_i) of the argmax-key symbols, bits", "entropy"),
    ("pair mean, pair min", "pair dividends = mutual information I(X_i; X_j) between two heads, bits", "mutual-information"),
    ("triples < 0", "share of triple dividends below 0 (redundancy), with its 95% bootstrap interval", "triple-summary"),
    ("triple mean, triple median", "of the triple dividends D({i, j, k}), bits", "triple-summary"),
    ("Wilcoxon p", "one-sided signed-rank p that the median triple dividend is below 0 (descriptive)", "triple-summary"),
)
NOTE_TITLES = {  # fep.json note key -> (readable title, docs/formulas.md anchor)
    "dividends": ("Dividends", "dividends"),
    "wilcoxon": ("Wilcoxon test", "triple-summary"),
    "bootstrap": ("Bootstrap intervals", "bootstrap"),
    "fep_score": ("Head score m_i", "marginal-contribution"),
    "orders": ("Higher orders", "saturation"),
}


def readable(text: Any) -> str:
    """Escaped text with the notes' plain-text notation set as HTML: X_{ab} and X_i as subscripts,
    ^{…} and ^(…) as superscripts."""
    out = escape(str(text), quote=True)
    out = re.sub(r"_\{([^}]*)\}", r"<sub>\1</sub>", out)
    out = re.sub(r"\^\{([^}]*)\}", r"<sup>\1</sup>", out)
    out = re.sub(r"\^\(([^)]*)\)", r"<sup>(\1)</sup>", out)
    return re.sub(r"\b([A-Za-z])_([A-Za-z0-9])\b", r"\1<sub>\2</sub>", out)


def _cite(anchor: str) -> str:
    return f"<code>docs/formulas.md#{_e(anchor)}</code>"


def render_fep_section(result: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """The GT-FEP results as one ``<section>`` (figures embedded)."""
    s = result.get("summary", {})
    t = s.get("triples", {})
    data = result.get("data", {})
    model = result.get("model", {})
    parts = [
        '<section id="gt-fep"><h2>GT-FEP: higher-order synergy of attention heads</h2>',
        f"<p>{_e(model.get('spec'))} ({_e(model.get('architecture'))}, {_e(model.get('n_layers'))} layers × {_e(model.get('n_heads'))} heads); "
        f"{_e(data.get('source'))}: {_e(data.get('n_observations'))} observations per layer from {_e(data.get('n_sequences'))} sequences, "
        f"{_e(data.get('alphabet'))} argmax-key alphabet (K = {_e(data.get('alphabet_size'))}); saturation level log2(n) = "
        f"{_num(data.get('saturation_bits'), 2)} bits ({_cite('saturation')}).</p>",
        f"<p><b>Triple dividends</b>: {_num(100 * t.get('frac_negative', math.nan), 1)} % negative over the model "
        f"(mean {_num(t.get('mean'))} bits, median {_num(t.get('median'))}); {_e(s.get('layers_majority_negative_and_median_below_0'))} of "
        f"{_e(s.get('n_layers'))} layers have most triples negative and the median below 0. Pairwise dividends are "
        f"{'all' if s.get('pairs_all_nonnegative') else 'not all'} ≥ 0 ({_cite('dividends')}, {_cite('triple-summary')}).</p>",
    ]
    for w in result.get("warnings", []):
        parts.append(f'<p class="note">warning: {_e(w)}</p>')
    nash = result.get("epsilon_nash")
    if nash:
        rho = nash.get("spearman_rho")
        parts.append(
            f"<p><b>ε-Nash</b> ({_cite('epsilon-nash')}): pruning {_e(nash['n_pruned'])} heads ({_num(100 * nash['fraction'], 0)} %) by m<sub>i</sub> leaves "
            f"ε = {_num(nash['epsilon_bits'])} bits = {_num(nash['epsilon_relative'])} of the mean head entropy"
            + (f"; Spearman ρ(m<sub>i</sub>, ablation ΔNLL) = {_num(rho)} (p = {_num(nash.get('spearman_p'))})" if rho is not None else "")
            + ".</p>"
        )
    for name in ("dividends_hist", "triples_by_layer", "coalitions"):
        if name in images:
            uri = "data:image/png;base64," + base64.b64encode(images[name]).decode("ascii")
            parts.append(f'<figure><img src="{uri}" alt="{_e(name)}"><figcaption>{_e(FIGURE_TEXT[name])}</figcaption></figure>')
    heads = ["layer", "mean entropy", "pair mean", "pair min", "triples < 0", "95% CI", "triple mean", "triple median", "Wilcoxon p"]
    parts.append("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr></thead><tbody>")
    for r in layer_rows(result):
        ci = f"[{_num(r['frac_negative_ci_low'], 2)}, {_num(r['frac_negative_ci_high'], 2)}]"
        cells = [r["layer"], _num(r["entropy_mean_bits"], 2), _num(r["pair_mean_bits"]), _num(r["pair_min_bits"]),
                 _num(r["frac_negative"], 2), ci, _num(r["triple_mean_bits"]), _num(r["triple_median_bits"]), _num(r["wilcoxon_p_less"])]
        parts.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    parts.append("</tbody></table>")
    parts.append('<dl class="note">' + "".join(f"<dt>{_e(h)}</dt><dd>{readable(d)} ({_cite(a)})</dd>" for h, d, a in TABLE_COLUMNS) + "</dl>")
    for key, text in (result.get("notes") or {}).items():
        title, anchor = NOTE_TITLES.get(key, (key.replace("_", " ").capitalize(), None))
        cite = f" ({_cite(anchor)})" if anchor else ""
        parts.append(f'<p class="note"><b>{readable(title)}</b>: {readable(text)}{cite}</p>')
    parts.append("</section>")
    return "\n".join(parts)


CSS = """body{font-family:system-ui,sans-serif;margin:0;color:#222}main{max-width:1100px;margin:auto;padding:1.5em}
table{border-collapse:collapse;font-size:.88em;font-variant-numeric:tabular-nums}th,td{padding:3px 9px;text-align:right;border-bottom:1px solid #eee}
figure{margin:1em 0}img{max-width:100%}.note{color:#666;font-size:.88em}
dl.note{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}dl.note dd{margin:0}"""


def render_page(result: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    title = f"headgame fep · {_e((result.get('model') or {}).get('spec', 'model'))}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head>'
            f"<body><main><h1>{title}</h1>\n{render_fep_section(result, images)}\n</main></body></html>\n")


def write_outputs(result: dict, infos: Mapping[int, Any], head_scores: Mapping[str, np.ndarray | None], out: Path, *,
                  table_format: str = "csv", config_yaml: str | None = None, report: bool = True) -> list[Path]:
    """Write the dividends table, layer summary, head scores, fep.json, figures and report.html."""
    from headgame.info.analysis import dividend_rows

    out = Path(out)
    paths = []
    rows = [r for info in infos.values() for r in dividend_rows(info)]
    paths.append(write_table(rows, ["layer", "order", "heads", "value", "ci_low", "ci_high"], out / "dividends", table_format))
    lrows = layer_rows(result)
    if lrows:
        paths.append(write_table(lrows, list(lrows[0]), out / "layer_summary", "csv"))
    names = [k for k, v in head_scores.items() if v is not None]
    hs_rows = []
    for l in sorted(infos):
        for h in range(infos[l].n_heads):
            hs_rows.append({"layer": l, "head": h, **{k: float(head_scores[k][l, h]) for k in names}})
    paths.append(write_table(hs_rows, ["layer", "head", *names], out / "head_scores", "csv"))
    paths.append(write_json_atomic(out / "fep.json", result))
    if config_yaml is not None:
        paths.append(write_text_atomic(out / "config.yaml", config_yaml))
    if report and infos:
        images = {"dividends_hist": plot_dividend_histograms(infos), "triples_by_layer": plot_triples_by_layer(result)}
        co = plot_co_membership(infos)
        if co is not None:
            images["coalitions"] = co
        for name, data in images.items():
            paths.append(write_bytes_atomic(out / f"{name}.png", data))
        paths.append(write_text_atomic(out / "report.html", render_page(result, images)))
    return paths
