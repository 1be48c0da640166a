"""``headgame eval --compare BASE.json METHOD.json``: the paper's table (docs/formulas.md#aggregates).

Per task: both scores, the relative change Δ% (sign flipped when lower is better), and a paired
significance test on the items both runs scored (matched by item id): McNemar for binary
per-item outcomes, a two-sided paired bootstrap (10,000 resamples) otherwise; * marks p < 0.05.
Halluc Δ is the mean Δ over the six hallucination tasks, Knowledge Δ over the five knowledge
tasks (each over the tasks present in both files, the count is shown).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headgame.evaluate.stats import BOOTSTRAP_RESAMPLES, mcnemar, paired_bootstrap, ratio_score, relative_delta
from headgame.io import read_result_json

GROUPS = (("halluc", "Halluc Δ"), ("knowledge", "Knowledge Δ"))


def load_eval(path: str | Path) -> dict:
    return read_result_json(path, key="tasks", kind=dict, file="eval.json", command="eval", holds="per-task results")


@dataclass
class Row:
    task: str
    label: str
    group: str
    metric: str
    higher_is_better: bool
    base: float
    method: float
    delta: float
    n: int
    test: str
    p: float

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p) and self.p < 0.05


def compare(base: dict, method: dict, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Rows, aggregates and notes of the comparison of two eval.json dicts."""
    rows: list[Row] = []
    notes: list[str] = []
    for name, b in base["tasks"].items():
        m = method["tasks"].get(name)
        if m is None:
            notes.append(f"{name} is only in the base file")
            continue
        b_items = {it["id"]: it for it in b.get("items", [])}
        m_items = {it["id"]: it for it in m.get("items", [])}
        common = sorted(set(b_items) & set(m_items))
        transform = b.get("transform", "identity")
        b_score, m_score = float(b["score"]), float(m["score"])
        if common and len(common) < max(len(b_items), len(m_items)):
            # different item sets: score both on the shared items so Δ and the test agree
            b_score = ratio_score([b_items[i]["num"] for i in common], [b_items[i]["den"] for i in common], transform)
            m_score = ratio_score([m_items[i]["num"] for i in common], [m_items[i]["den"] for i in common], transform)
            notes.append(f"{name}: scored on the {len(common)} items in both files (base has {len(b_items)}, method {len(m_items)})")
        if not common:
            test, p = "none", math.nan
        elif b.get("binary", False) and m.get("binary", False):
            res = mcnemar([b_items[i]["num"] for i in common], [m_items[i]["num"] for i in common])
            test, p = f"McNemar (b={res['b']}, c={res['c']})", res["p"]
        else:
            res = paired_bootstrap([b_items[i]["num"] for i in common], [b_items[i]["den"] for i in common],
                                   [m_items[i]["num"] for i in common], [m_items[i]["den"] for i in common],
                                   transform, resamples=resamples, seed=seed)
            test, p = f"paired bootstrap ({res['resamples']})", res["p"]
        hib = bool(b.get("higher_is_better", True))
        rows.append(Row(name, b.get("label", name), b.get("group", "extra"), b.get("metric", ""), hib,
                        b_score, m_score, relative_delta(b_score, m_score, hib),
                        len(common), test, p))
    notes += [f"{name} is only in the method file" for name in method["tasks"] if name not in base["tasks"]]
    aggregates = {}
    for group, label in GROUPS:
        deltas = [r.delta for r in rows if r.group == group and math.isfinite(r.delta)]
        aggregates[group] = {"label": label, "delta": sum(deltas) / len(deltas) if deltas else math.nan, "n_tasks": len(deltas)}
    return {"rows": rows, "aggregates": aggregates, "notes": notes,
            "base": _who(base), "method": _who(method)}


def _who(data: dict) -> str:
    model = data.get("model", {})
    name = str(model.get("spec", "?"))
    if model.get("adapter"):
        name += f" + {Path(str(model['adapter'].get('path', 'adapter'))).name}"
    dec = (data.get("decoding") or {}).get("name", "greedy")
    return name if dec == "greedy" else f"{name} ({dec})"


def _num(x: float, digits: int = 3) -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:.4g}" if abs(x) >= 1e5 else f"{x:.{digits}f}"


def _delta(x: float, mark: bool = False) -> str:
    if not math.isfinite(x):
        return "—" + ("*" if mark else "")
    text = f"{x:+.3g}%" if abs(x) >= 1e5 else f"{x + 0.0:+.1f}%".replace("-0.0%", "+0.0%")
    return text + ("*" if mark else "")


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Task", "Metric", "Base", "Method", "Δ%", "p", "Test", "n"]
    body = []
    for r in result["rows"]:
        metric = r.metric + ("" if r.higher_is_better else " ↓")
        body.append([r.label, metric, _num(r.base), _num(r.method), _delta(r.delta, r.significant), _p(r.p), r.test, str(r.n)])
    for group, agg in result["aggregates"].items():
        total = 6 if group == "halluc" else 5
        body.append([agg["label"], f"mean of {agg['n_tasks']}/{total}", "", "", _delta(agg["delta"]), "", "", ""])
    return header, body


def to_markdown(result: dict) -> str:
    header, body = table_rows(result)
    lines = [f"Base: {result['base']} · Method: {result['method']}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += ["", "Δ% = (method − base) / base × 100, sign flipped for lower-is-better metrics (↓); "
              "* p < 0.05 (McNemar for binary items, paired bootstrap otherwise)."]
    lines += [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def to_html(result: dict) -> str:
    header, body = table_rows(result)
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    trs = []
    for row in body:
        cls = ' class="agg"' if row[0].endswith("Δ") else ""
        trs.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    notes = "".join(f"<li>{esc(n)}</li>" for n in result["notes"])
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>headgame eval comparison</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "tr.agg td{font-weight:bold;background:#f4f4f4}</style></head><body>"
        f"<h1>headgame eval comparison</h1><p>Base: {esc(result['base'])}<br>Method: {esc(result['method'])}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(trs)}</tbody></table>"
        "<p>Δ% = (method − base) / base × 100, sign flipped for lower-is-better metrics (↓); * p &lt; 0.05 "
        "(McNemar for binary items, paired bootstrap with 10,000 resamples otherwise).</p>"
        f"<ul>{notes}</ul></body></html>\n"
    )


def to_json(result: dict) -> dict[str, Any]:
    return {
        "base": result["base"], "method": result["method"], "notes": result["notes"],
        "aggregates": result["aggregates"],
        "rows": [{**r.__dict__, "significant": r.significant} for r in result["rows"]],
    }
