"""``headgame analyze --compare BEFORE.json AFTER.json``: what training did to head coupling.

Per layer ΔG and ΔΓ, and the selective-coordination test of docs/formulas.md#selective-coordination: coalitions
from the after-G, Δ|G| of within-coalition pairs against between-coalition pairs (one-sided
Mann–Whitney, rank-biserial effect size). Both analyses must be of one base model (an adapter or
a merged model of ``train --save-merged`` on top of it is fine); layers in only one of them are
listed as dropped. Writes compare.json, a ΔG heatmap, compare.html and config.yaml.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from headgame.errors import HeadgameError
from headgame.game.coalitions import selective_coordination_change
from headgame.io import read_analysis, write_bytes_atomic, write_json_atomic, write_text_atomic
from headgame.outdir import RunFolder
from headgame.models.identity import describe, file_digest, result_identity
from headgame.report.summary import fmt_delta, fmt_num, fmt_p


def check_same_base(before: dict[str, Any], after: dict[str, Any], names: tuple[str, str] = ("BEFORE", "AFTER")) -> None:
    """Refuse two analyses whose base models differ (weights hash), naming both."""
    b, a = result_identity(before.get("model") or {}), result_identity(after.get("model") or {})
    if b["hash"] and a["hash"] and b["hash"] != a["hash"]:
        raise HeadgameError(
            f"{names[0]} analyses {describe(b['spec'], b['hash'])} but {names[1]} analyses "
            f"{describe(a['spec'], a['hash'])}; compare analyses of one base model (before training, and after it "
            "with --adapter or its merged model)"
        )


def compare_analyses(before: dict[str, Any], after: dict[str, Any], names: tuple[str, str] = ("BEFORE", "AFTER")) -> dict[str, Any]:
    """Per-layer ΔG, ΔΓ and selective coordination for the layers both analyses share."""
    check_same_base(before, after, names)
    b_layers = {l["layer"]: l for l in before["layers"]}
    a_layers = {l["layer"]: l for l in after["layers"]}
    shared = sorted(set(b_layers) & set(a_layers))
    if not shared:
        raise HeadgameError("the two analyses share no layer; analyse the same --layers before and after training")
    rows = []
    for layer in shared:
        gb, ga = np.array(b_layers[layer]["G"]), np.array(a_layers[layer]["G"])
        if gb.shape != ga.shape:
            raise HeadgameError(f"layer {layer} has G of shape {gb.shape} before and {ga.shape} after; compare analyses of the same architecture")
        labels = a_layers[layer]["coalitions"]["labels"]  # docs/formulas.md#selective-coordination: coalitions of the after-G
        rows.append({
            "layer": layer,
            "delta_G": (ga - gb).tolist(),
            "gamma_before": b_layers[layer]["gamma"], "gamma_after": a_layers[layer]["gamma"],
            "delta_gamma": a_layers[layer]["gamma"] - b_layers[layer]["gamma"],
            "delta_gamma_norm": a_layers[layer]["gamma_norm"] - b_layers[layer]["gamma_norm"],
            "coalition_labels_after": labels,
            "selective_coordination": selective_coordination_change(gb, ga, labels),
        })
    deltas = [r["delta_gamma"] for r in rows]
    return {
        "before": _side(before),
        "after": _side(after),
        "layers": rows,
        "dropped_layers": {"only_before": sorted(set(b_layers) - set(a_layers)),
                           "only_after": sorted(set(a_layers) - set(b_layers))},
        "summary": {
            "mean_delta_gamma": float(np.mean(deltas)),
            "layers_gamma_lower_after": int(sum(d < 0 for d in deltas)),
            "n_layers": len(rows),
        },
    }


def _side(analysis: dict[str, Any]) -> dict[str, Any]:
    data = analysis.get("data") or {}
    return {"model": analysis.get("model", {}), "created": analysis.get("created"),
            "headgame_version": analysis.get("headgame_version"),
            "data": {k: data.get(k) for k in ("source", "n_tokens", "seq_len") if k in data}}


def dropped_note(result: dict[str, Any]) -> str | None:
    """One sentence naming the layers left out because only one analysis has them."""
    d = result.get("dropped_layers") or {}
    parts = [f"{', '.join(map(str, d[k]))} (only in {side})" for k, side in (("only_before", "BEFORE"), ("only_after", "AFTER")) if d.get(k)]
    return f"layers dropped: {'; '.join(parts)}" if parts else None


ARTEFACTS = ("compare.json", "compare.html", "delta_G.png", "config.yaml", "compare_config.yaml")
"""What ``analyze --compare`` writes into --out (its own folder, or beside an analyze run)."""


def run_compare(before_path: str, after_path: str, out: str | Path) -> dict[str, Any]:
    from headgame.report.plots import choose_heatmap_layers, plot_matrix_delta
    from headgame.report.runconfig import write_compare_config

    before, after = read_analysis(before_path), read_analysis(after_path)
    result = compare_analyses(before, after, (str(before_path), str(after_path)))
    result["inputs"] = {"before": str(before_path), "after": str(after_path)}
    out = Path(out)
    with RunFolder(out, command="analyze --compare", artefacts=ARTEFACTS, accepts=("analyze",)):
        layer_ids = [r["layer"] for r in result["layers"]]
        picks = choose_heatmap_layers(len(layer_ids), [abs(r["delta_gamma"]) for r in result["layers"]])
        shown = [layer_ids[i] for i in picks]
        png = plot_matrix_delta(before["layers"], after["layers"], shown)
        write_bytes_atomic(out / "delta_G.png", png)
        write_json_atomic(out / "compare.json", result)
        write_text_atomic(out / "compare.html", _html(result, png))
        config = {"out": str(out), "inputs": {
            side: {"path": str(path), "sha256": file_digest(path), "model": result[side]["model"].get("spec"),
                   "model_hash": result[side]["model"].get("hash"), "adapter": result[side]["model"].get("adapter"),
                   "adapter_hash": result[side]["model"].get("adapter_hash")}
            for side, path in (("before", before_path), ("after", after_path))}}
        write_compare_config(out, "analyze --compare", config)
    return result


def _cells(r: dict[str, Any]) -> list[str]:
    """One table row; the page, the terminal and the ΔG panel titles share these formats."""
    sc = r["selective_coordination"]
    return [str(r["layer"]), fmt_num(r["gamma_before"]), fmt_num(r["gamma_after"]), fmt_delta(r["delta_gamma"]),
            fmt_p(sc.get("p")), fmt_delta(sc.get("effect_size_r"))]


HEADER = ["layer", "Γ before", "Γ after", "ΔΓ", "MW p (selective)", "r"]


def _meta_html(result: dict[str, Any]) -> str:
    items = []
    for side in ("before", "after"):
        s = result[side]
        m = s.get("model") or {}
        text = describe(m.get("spec"), m.get("hash"))
        if m.get("adapter"):
            text += f" + adapter {describe(m['adapter'], m.get('adapter_hash'))}{' merged' if m.get('adapter_merged') else ''}"
        if isinstance(m.get("base"), dict):
            text += f", merged model of {describe(m['base'].get('spec'), m['base'].get('hash'))}"
        data = s.get("data") or {}
        text += f" · {data.get('n_tokens', '?')} tokens of {data.get('source', '?')} · analysed {s.get('created') or '?'}"
        items.append(f"<dt>{side}</dt><dd>{html.escape(text)}</dd>")
    return "<dl>" + "".join(items) + "</dl>"


def _html(result: dict[str, Any], png: bytes) -> str:
    rows = ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in result["layers"]]
    s = result["summary"]
    dropped = dropped_note(result)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>headgame compare</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
dl{{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}}dd{{margin:0}}.note{{color:#666}}</style></head><body>
<h1>Head coupling before and after</h1>
{_meta_html(result)}
<p>Mean ΔΓ = {fmt_delta(s['mean_delta_gamma'])}; Γ is lower after in {s['layers_gamma_lower_after']} of {s['n_layers']} layers.
Γ = ‖G − I‖<sub>F</sub> of the head interaction matrix G (docs/formulas.md#gamma); ΔΓ = Γ after − Γ before.
Selective coordination (docs/formulas.md#selective-coordination): coalitions from the after-G; one-sided Mann–Whitney of Δ|G|
between coalitions against within; r is its rank-biserial effect size, r &gt; 0 means coupling fell more between coalitions.</p>
{f'<p class="note">{html.escape(dropped)}</p>' if dropped else ''}
<img alt="ΔG heatmaps" src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width:100%">
<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in HEADER)}</tr>
{''.join(rows)}</table></body></html>
"""


def print_compare(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="head coupling: after − before", header_style="bold")
    for col in HEADER:
        table.add_column(col, justify="right")
    for r in result["layers"]:
        table.add_row(*_cells(r))
    console = Console()
    console.print(table)
    s = result["summary"]
    console.print(f"mean ΔΓ = {fmt_delta(s['mean_delta_gamma'])} · Γ lower after in {s['layers_gamma_lower_after']} of {s['n_layers']} layers")
    dropped = dropped_note(result)
    if dropped:
        console.print(dropped, markup=False, highlight=False)
