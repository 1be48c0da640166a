"""``headgame analyze --compare BEFORE.json AFTER.json``: what training did to head coupling.

Per layer ΔG and ΔΓ, and the selective-coordination test of docs/formulas.md#selective-coordination: coalitions
from the after-G, Δ|G| of within-coalition pairs against between-coalition pairs (one-sided
Mann–Whitney, rank-biserial effect size). Writes compare.json, a ΔG heatmap and compare.html.
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


def compare_analyses(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-layer ΔG, ΔΓ and selective coordination for the layers both analyses share."""
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
        "before": {"model": before.get("model", {}), "created": before.get("created")},
        "after": {"model": after.get("model", {}), "created": after.get("created")},
        "layers": rows,
        "summary": {
            "mean_delta_gamma": float(np.mean(deltas)),
            "layers_gamma_lower_after": int(sum(d < 0 for d in deltas)),
            "n_layers": len(rows),
        },
    }


def run_compare(before_path: str, after_path: str, out: str | Path) -> dict[str, Any]:
    from headgame.report.plots import choose_heatmap_layers, plot_matrix_delta

    before, after = read_analysis(before_path), read_analysis(after_path)
    result = compare_analyses(before, after)
    result["inputs"] = {"before": str(before_path), "after": str(after_path)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layer_ids = [r["layer"] for r in result["layers"]]
    picks = choose_heatmap_layers(len(layer_ids), [abs(r["delta_gamma"]) for r in result["layers"]])
    shown = [layer_ids[i] for i in picks]
    png = plot_matrix_delta(before["layers"], after["layers"], shown)
    write_bytes_atomic(out / "delta_G.png", png)
    write_json_atomic(out / "compare.json", result)
    write_text_atomic(out / "compare.html", _html(result, png))
    return result


def _html(result: dict[str, Any], png: bytes) -> str:
    rows = []
    for r in result["layers"]:
        sc = r["selective_coordination"]
        p = sc.get("p")
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                r["layer"], f"{r['gamma_before']:.4f}", f"{r['gamma_after']:.4f}", f"{r['delta_gamma']:+.4f}",
                "—" if p is None else f"{p:.3g}", "—" if sc.get("effect_size_r") is None else f"{sc['effect_size_r']:+.3f}",
            )) + "</tr>"
        )
    b, a = result["before"]["model"], result["after"]["model"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>headgame compare</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>Head coupling before and after</h1>
<p>before: {html.escape(str(b.get('spec')))} ({html.escape(str(b.get('hash', ''))[:19])}) ·
after: {html.escape(str(a.get('spec')))} ({html.escape(str(a.get('hash', ''))[:19])})</p>
<p>Mean ΔΓ = {result['summary']['mean_delta_gamma']:+.4f}; Γ is lower after in
{result['summary']['layers_gamma_lower_after']} of {result['summary']['n_layers']} layers.
Selective coordination (docs/formulas.md#selective-coordination): coalitions from the after-G; one-sided Mann–Whitney of Δ|G|
between coalitions against within; r &gt; 0 means coupling fell more between coalitions.</p>
<img alt="ΔG heatmaps" src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width:100%">
<table><tr><th>layer</th><th>Γ before</th><th>Γ after</th><th>ΔΓ</th><th>MW p</th><th>r</th></tr>
{''.join(rows)}</table></body></html>
"""


def print_compare(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="head coupling: after − before", header_style="bold")
    for col in ("layer", "Γ before", "Γ after", "ΔΓ", "MW p (selective)", "r"):
        table.add_column(col, justify="right")
    for r in result["layers"]:
        sc = r["selective_coordination"]
        table.add_row(str(r["layer"]), f"{r['gamma_before']:.4f}", f"{r['gamma_after']:.4f}", f"{r['delta_gamma']:+.4f}",
                      "—" if sc.get("p") is None else f"{sc['p']:.3g}",
                      "—" if sc.get("effect_size_r") is None else f"{sc['effect_size_r']:+.3f}")
    console = Console()
    console.print(table)
    s = result["summary"]
    console.print(f"mean ΔΓ = {s['mean_delta_gamma']:+.4f} · Γ lower after in {s['layers_gamma_lower_after']} of {s['n_layers']} layers")
