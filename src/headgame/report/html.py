"""One self-contained HTML page for ``headgame analyze``: inline CSS, figures as data URIs.

The page needs no network and no JavaScript, so it can be mailed or archived as one file.
Every piece of text taken from the analysis is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from headgame.io import write_bytes_atomic, write_text_atomic
from headgame.report.summary import DASH, LayerRow, fmt_num, fmt_p, gamma_footer, gamma_stats, layer_rows

FIGURES = {  # file stem -> (heading, caption)
    "gamma_by_layer": (
        "Γ by layer",
        "Top: Γ per layer with the max and min layers marked. "
        "Bottom: Γ_norm (RMS off-diagonal coupling) and Γ_abs (mean |G_ij|), comparable across head counts.",
    ),
    "G_heatmaps": (
        "Head interaction matrices",
        "G per chosen layer, colour fixed to [−1, 1]. Heads are grouped by coalition: tick labels give "
        "the original head index, coloured by coalition, and thin lines separate coalitions. "
        "The diagonal (≡ 1) is grey.",
    ),
    "redundancy_by_layer": (
        "Redundancy by layer",
        "Redundancy index and the Barlow-Twins loss between heads (uniform and G-adaptive weights).",
    ),
}
REPORT_FILES = (*(f"{stem}.png" for stem in FIGURES), "report.html")
"""Every file :func:`write_report` may write (a fresh run clears them: headgame.outdir)."""

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:32px 0 8px;border-bottom:1px solid #e3e3e3;padding-bottom:4px}
.sub{color:#666;margin:0 0 16px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 18px;margin:0}
dl.meta dt{color:#666}dl.meta dd{margin:0}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em}
pre{background:#f4f4f4;padding:12px;overflow-x:auto;border-radius:4px}
figure{margin:8px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.9em;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #eee;white-space:nowrap}
th{background:#fafafa;position:sticky;top:0}
tr.max td{background:#fde9c9;font-weight:600}tr.min td{background:#e3eef9}
.note{color:#666;font-size:.88em}
dl.defs{font-size:.88em;margin-top:10px}
"""


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _data_uri(data: bytes) -> str:
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/svg+xml"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, Mapping) else None


def _meta(analysis: Mapping[str, Any]) -> str:
    model = _get(analysis, "model") or {}
    data = _get(analysis, "data") or {}
    timing = _get(analysis, "timing") or {}
    versions = _get(analysis, "versions") or {}

    def num(x: Any) -> str:
        return f"{int(x):,}" if isinstance(x, (int, float)) and math.isfinite(x) else DASH

    shape = ", ".join(
        f"{label} {num(model.get(k))}"
        for k, label in [("n_layers", "layers"), ("n_heads", "heads"), ("n_kv_heads", "KV heads"),
                         ("head_dim", "head dim"), ("d_model", "d_model")]
        if k in model
    )
    items = [
        ("model", f"{model.get('spec', DASH)} ({model.get('architecture', model.get('family', '?'))})"),
        ("shape", shape or DASH),
        ("objective", model.get("objective", DASH)),
        ("model hash", model.get("hash", DASH)),
        ("data", f"{data.get('source', DASH)}: {num(data.get('n_tokens'))} tokens in {num(data.get('n_blocks'))}"
                 f" blocks of {num(data.get('seq_len'))} ({num(data.get('n_documents'))} documents)"),
        ("run", f"{analysis.get('created', DASH)} · {fmt_num(timing.get('seconds'), 3)} s"
                f" · {fmt_num(timing.get('tokens_per_s'), 3)} tokens/s"),
        ("versions", " · ".join(f"{k} {v}" for k, v in versions.items()) or DASH),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f'<dl class="meta">{rows}</dl>'


def _explainer(analysis: Mapping[str, Any]) -> str:
    assumption = next(
        (str(_get(lay.get("poa_proxy"), "assumption")) for lay in (_get(analysis, "layers") or [])
         if isinstance(lay, Mapping) and _get(lay.get("poa_proxy"), "assumption")),
        "c is an assumed constant, not estimated",
    )
    return (
        "<p>Each layer's heads are treated as players in a game. The head interaction matrix "
        "<b>G = ω ⊙ ρ</b> multiplies two couplings entrywise: the <b>weight coupling</b> ω<sub>ij</sub> is "
        "the cosine between heads i and j's slices of the output projection, and the <b>gradient "
        "coupling</b> ρ<sub>ij</sub> is the cosine between the cross-entropy gradients the two heads "
        "receive on the analysed tokens. G is positive semi-definite with unit diagonal. "
        "<b>Γ = ‖G − I‖<sub>F</sub></b> is its off-diagonal mass: 0 when heads are independent, larger "
        "when they pull together or against each other. Γ_norm = Γ/√(H(H−1)) and Γ_abs (mean |G<sub>ij</sub>|) "
        "compare across head counts; L<sub>LDB</sub> = −log det(G + 0.01 I). Coalitions are spectral "
        "clusters of |G|; the Mann–Whitney p tests whether coupling within coalitions exceeds coupling "
        "between them.</p>"
        "<p class=\"note\">The price-of-anarchy value is a <b>proxy</b>, 1/(1 − cΓ²), not the paper's bound, "
        f"whose constants are not estimated. Assumption: {_e(assumption)}</p>"
    )


COLUMN_DEFINITIONS = (  # (column, one-line definition, docs/formulas.md anchor)
    ("Γ", "off-diagonal mass ‖G − I‖_F of the head interaction matrix G = ω ⊙ ρ", "gamma"),
    ("Γ_norm, Γ_abs", "Γ/√(H(H−1)) (RMS off-diagonal coupling) and mean |G_ij|, comparable across head counts", "gamma"),
    ("L_LDB", "log-determinant barrier −log det(G + 0.01 I): large when heads are nearly collinear", "ldb"),
    ("PoA proxy", "1/(1 − cΓ²), a labelled proxy for the price-of-anarchy bound, not the bound", "poa-proxy"),
    ("k, coalition sizes", "coalitions of heads by spectral biclustering of |G|", "coalitions"),
    ("MW p", "one-sided Mann–Whitney p that |G| within coalitions exceeds |G| between them", "mann-whitney"),
)
REDUNDANCY_DEFINITIONS = (
    ("redundancy index", "mean over head pairs i < j of mean |C_ij|, C_ij the z-scored cross-correlation of the "
                         "two heads' outputs: higher = heads carry more of the same signal", "redundancy"),
    ("L_ABT adaptive", "the adaptive Barlow-Twins loss between heads: mean over pairs i < j of w_ij ‖C_ij − I‖_F², "
                       "the pair weights w_ij set from G (docs/formulas.md#pair-weights)", "bt-loss"),
)


def _definitions(with_redundancy: bool) -> str:
    """One line per column: what it is and its docs/formulas.md entry."""
    defs = COLUMN_DEFINITIONS + (REDUNDANCY_DEFINITIONS if with_redundancy else ())
    items = "".join(f"<dt>{_e(name)}</dt><dd>{_e(text)} (<code>docs/formulas.md#{_e(anchor)}</code>)</dd>"
                    for name, text, anchor in defs)
    return f'<dl class="meta defs">{items}</dl>'


def _table(rows: list[LayerRow]) -> str:
    stats = gamma_stats(rows)
    red = any(r.has_redundancy for r in rows)
    heads = ["layer", "Γ", "Γ_norm", "Γ_abs", "L_LDB", "PoA proxy", "k", "coalition sizes", "MW p (within > between)"]
    if red:
        heads += ["redundancy index", "L_ABT adaptive"]
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in heads), "</tr></thead><tbody>"]
    for r in rows:
        cls = ' class="max"' if r.layer == stats.max_layer else ' class="min"' if r.layer == stats.min_layer else ""
        p_title = f' title="{_e(r.p_note)}"' if r.p_note else ""
        cells = [
            f"<td>{_e(r.layer)}</td>",
            f"<td>{_e(fmt_num(r.gamma))}</td>",
            f"<td>{_e(fmt_num(r.gamma_norm, 3))}</td>",
            f"<td>{_e(fmt_num(r.gamma_abs, 3))}</td>",
            f"<td>{_e(fmt_num(r.ldb, 3))}</td>",
            f"<td>{_e(fmt_num(r.poa_proxy))}</td>",
            f"<td>{_e(r.k if r.k is not None else DASH)}</td>",
            f"<td>{_e(' / '.join(map(str, r.sizes)) or DASH)}</td>",
            f"<td{p_title}>{_e(fmt_p(r.p))}</td>",
        ]
        if red:
            cells += [f"<td>{_e(fmt_num(r.redundancy_index, 3))}</td>", f"<td>{_e(fmt_num(r.l_abt_adaptive))}</td>"]
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    out.append(f'<p class="note">{_e(gamma_footer(stats))}. Orange row: max Γ; blue row: min Γ.</p>')
    out.append(_definitions(red))
    return "".join(out)


def _figure_html(name: str, data: bytes) -> str:
    heading, caption = FIGURES.get(name, (name.replace("_", " "), ""))
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return (f"<h2>{_e(heading)}</h2><figure><img src=\"{_data_uri(data)}\" alt=\"{_e(heading)}\">"
            f"{cap}</figure>")


def _config_text(config: Any) -> str:
    try:
        import yaml

        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    except Exception:  # odd values (NaN keys, objects): JSON with str() fallback is always possible
        return json.dumps(config, indent=2, default=str, ensure_ascii=False)


def render_report_html(analysis: dict, images: dict[str, bytes], title: str | None = None) -> str:
    """The whole report as one HTML string; ``images`` maps figure stems to PNG bytes.

    Known stems (``gamma_by_layer``, ``G_heatmaps``, ``redundancy_by_layer``) get their
    section and caption; any other image is appended under its own name.
    """
    images = {k.removesuffix(".png"): v for k, v in images.items() if v}
    spec = _get(_get(analysis, "model"), "spec") or "model"
    title = title or f"headgame analyze · {spec}"
    rows = layer_rows(analysis)
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="sub">head interaction analysis, headgame {_e(analysis.get("headgame_version", "?"))}</p>',
            _meta(analysis), "<h2>What this measures</h2>", _explainer(analysis)]
    if "gamma_by_layer" in images:
        body.append(_figure_html("gamma_by_layer", images["gamma_by_layer"]))
    body.append("<h2>Per layer</h2>")
    body.append(_table(rows) if rows else '<p class="note">No layers were analysed.</p>')
    for name in ["G_heatmaps", "redundancy_by_layer"] + [k for k in images if k not in FIGURES]:
        if name in images:
            body.append(_figure_html(name, images[name]))
    body.append(f"<h2>Configuration</h2><pre>{_e(_config_text(analysis.get('config', {})))}</pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main>\n{chr(10).join(body)}\n</main></body></html>\n"
    )


def write_report(analysis: dict, out_dir: Path, *, heatmap_layers: list[int] | None = None) -> dict[str, Path]:
    """Write the figures and ``report.html`` into ``out_dir``, each file atomically.

    Writes ``gamma_by_layer.png``, ``G_heatmaps.png`` and, when any layer has redundancy
    results, ``redundancy_by_layer.png``; ``report.html`` embeds the same bytes. Heatmap
    layers default to ``analysis["summary"]["heatmap_layers"]`` (those that were analysed),
    else :func:`~headgame.report.plots.choose_heatmap_layers`. Returns paths keyed by file
    stem, plus ``"report"`` for the HTML.
    """
    from headgame.report import plots  # imported on use: it pulls in matplotlib

    out_dir = Path(out_dir)
    layers = list(analysis.get("layers") or [])
    images: dict[str, bytes] = {}
    if layers:
        ids = [lay.get("layer", i) for i, lay in enumerate(layers)]
        if heatmap_layers is None:
            wanted = _get(analysis.get("summary"), "heatmap_layers") or []
            heatmap_layers = [lid for lid in wanted if lid in ids]
        if not heatmap_layers:
            picks = plots.choose_heatmap_layers(len(layers), [r.gamma for r in layer_rows(analysis)])
            heatmap_layers = [ids[i] for i in picks]
        images["gamma_by_layer"] = plots.plot_gamma_by_layer(layers)
        images["G_heatmaps"] = plots.plot_interaction_heatmaps(layers, list(heatmap_layers), key="G")
        red = plots.plot_redundancy_by_layer(layers)
        if red is not None:
            images["redundancy_by_layer"] = red
    written = {name: write_bytes_atomic(out_dir / f"{name}.png", data) for name, data in images.items()}
    written["report"] = write_text_atomic(out_dir / "report.html", render_report_html(analysis, images))
    return written
