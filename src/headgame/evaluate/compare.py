"""``headgame eval --compare BASE.json METHOD.json``: the paper's table (docs/formulas.md#aggregates).

Per task: both scores, the relative change Δ% (sign flipped when lower is better), and a paired
significance test on the items both runs scored (matched by item id): McNemar for binary
per-item outcomes, a two-sided paired bootstrap (10,000 resamples) otherwise; * marks p < 0.05,
and n (the paired items) stands beside every p, marked † below :data:`SMALL_N`. Halluc Δ is the
mean Δ over the six hallucination tasks, Knowledge Δ over the five knowledge tasks (each over
the tasks present in both files, the count is shown). The page carries a legend (task names,
columns, McNemar's b and c) and the metadata of both runs; config.yaml records the inputs.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headgame.evaluate.stats import BOOTSTRAP_RESAMPLES, mcnemar, paired_bootstrap, ratio_score, relative_delta
from headgame.io import read_result_json, write_json_atomic, write_text_atomic

GROUPS = (("halluc", "Halluc Δ"), ("knowledge", "Knowledge Δ"))
SMALL_N = 30
"""Fewer paired items than this get the small-sample mark † and :data:`SMALL_NOTE`."""
SMALL_NOTE = (
    f"† n < {SMALL_N} paired items: the test has little power (a real difference of a few points is "
    "likely to come out non-significant), and a paired bootstrap over so few items sees few distinct "
    "resamples and understates the spread, so its p can be too small; read * beside † as weak evidence "
    "and rerun with more items (--limit / --n-items)."
)
COLUMNS = (
    ("Base / Method", "the task score of each run (on the items both scored)"),
    ("Δ%", "(method − base) / base × 100, sign flipped for lower-is-better metrics (↓), so + is better "
           "(docs/formulas.md#relative-delta)"),
    ("p", "two-sided p of the paired test; * p < 0.05"),
    ("n", "paired items, scored by both runs (matched by item id)"),
    ("McNemar (b, c)", "exact test on binary items: b = items the base got right and the method wrong, "
                       "c = items the method got right and the base wrong (docs/formulas.md#mcnemar)"),
    ("paired bootstrap (R)", "R joint resamples of the items for non-binary metrics (docs/formulas.md#paired-bootstrap)"),
    ("Halluc Δ / Knowledge Δ", "mean Δ% over the hallucination / knowledge tasks in both files (docs/formulas.md#aggregates)"),
)


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

    @property
    def small_sample(self) -> bool:
        return self.n < SMALL_N


def compare(base: dict, method: dict, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Rows, aggregates, notes, legend and run metadata of the comparison of two eval.json dicts."""
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
    legend = {r.label: f"{r.task}: {base['tasks'][r.task].get('description') or r.metric}" for r in rows}
    return {"rows": rows, "aggregates": aggregates, "notes": notes, "legend": legend,
            "base": _who(base), "method": _who(method), "meta": {"base": run_meta(base), "method": run_meta(method)},
            "options": {"resamples": resamples, "seed": seed, "small_n": SMALL_N}}


def _who(data: dict) -> str:
    model = data.get("model", {})
    name = str(model.get("spec", "?"))
    if model.get("adapter"):
        name += f" + {Path(str(model['adapter'].get('path', 'adapter'))).name}"
    dec = (data.get("decoding") or {}).get("name", "greedy")
    return name if dec == "greedy" else f"{name} ({dec})"


def run_meta(data: dict) -> dict[str, Any]:
    """What identifies a run: model and weights hash, adapter, decoding, items, date, versions."""
    model = data.get("model") or {}
    adapter = model.get("adapter") or {}
    cfg = data.get("config") or {}
    n = [int(t.get("n", len(t.get("items", [])))) for t in data.get("tasks", {}).values()]
    return {
        "model": model.get("spec"), "hash": model.get("hash"),
        "base": model.get("base"),
        "adapter": adapter.get("path"), "adapter_hash": adapter.get("hash"), "adapter_merged": adapter.get("merged"),
        "decoding": data.get("decoding") or {"name": "greedy"},
        "items": {"tasks": len(n), "total": sum(n), "min_per_task": min(n, default=0), "max_per_task": max(n, default=0)},
        "seed": cfg.get("seed"), "limit": cfg.get("limit"), "n_items": cfg.get("n_items"),
        "started": data.get("started"), "headgame": (data.get("versions") or {}).get("headgame"),
    }


def meta_lines(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) pairs of :func:`run_meta` for the page and the Markdown."""
    from headgame.models.identity import describe

    model = describe(meta.get("model"), meta.get("hash"))
    if isinstance(meta.get("base"), dict):
        model += f", merged model of {describe(meta['base'].get('spec'), meta['base'].get('hash'))}"
    if meta.get("adapter"):
        model += f" + adapter {describe(meta['adapter'], meta.get('adapter_hash'))}" + (" (merged)" if meta.get("adapter_merged") else "")
    dec = dict(meta.get("decoding") or {})
    name = dec.pop("name", "greedy")
    items = meta.get("items") or {}
    per = (f"{items.get('min_per_task')}" if items.get("min_per_task") == items.get("max_per_task")
           else f"{items.get('min_per_task')}–{items.get('max_per_task')}")
    return [
        ("model", model),
        ("decoding", name + (f" ({', '.join(f'{k}={v}' for k, v in dec.items())})" if dec else "")),
        ("items", f"{items.get('total')} over {items.get('tasks')} tasks ({per} per task; seed {meta.get('seed')}, "
                  f"limit {meta.get('limit')}, N {meta.get('n_items')})"),
        ("run", f"started {meta.get('started') or '?'} · headgame {meta.get('headgame') or '?'}"),
    ]


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
    header = ["Task", "Metric", "Base", "Method", "Δ%", "p", "n", "Test"]
    body = []
    for r in result["rows"]:
        metric = r.metric + ("" if r.higher_is_better else " ↓")
        n = f"{r.n}†" if r.small_sample else str(r.n)
        body.append([r.label, metric, _num(r.base), _num(r.method), _delta(r.delta, r.significant), _p(r.p), n, r.test])
    for group, agg in result["aggregates"].items():
        total = 6 if group == "halluc" else 5
        body.append([agg["label"], f"mean of {agg['n_tasks']}/{total}", "", "", _delta(agg["delta"]), "", "", ""])
    return header, body


def _footnotes(result: dict) -> list[str]:
    lines = ["Δ% = (method − base) / base × 100, sign flipped for lower-is-better metrics (↓); * p < 0.05 "
             "(McNemar for binary items, paired bootstrap otherwise); n = paired items behind each p."]
    if any(r.small_sample for r in result["rows"]):
        lines.append(SMALL_NOTE)
    return lines


def to_markdown(result: dict) -> str:
    header, body = table_rows(result)
    lines = [f"Base: {result['base']} · Method: {result['method']}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += [""] + _footnotes(result)
    lines += [f"- {n}" for n in result["notes"]]
    lines += ["", "Legend: " + " · ".join(f"{k} = {v}" for k, v in result.get("legend", {}).items())]
    lines += [f"- {name}: {text}" for name, text in COLUMNS]
    for side in ("base", "method"):
        if side in result.get("meta", {}):
            lines += ["", f"{side.capitalize()} run: " + " · ".join(f"{k} {v}" for k, v in meta_lines(result["meta"][side]))]
    return "\n".join(lines) + "\n"


def _dl(pairs: list[tuple[str, str]]) -> str:
    esc = html.escape
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs) + "</dl>"


def to_html(result: dict) -> str:
    header, body = table_rows(result)
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    trs = []
    for row in body:
        cls = ' class="agg"' if row[0].endswith("Δ") else ""
        trs.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    notes = "".join(f"<li>{esc(n)}</li>" for n in result["notes"])
    foot = "".join(f"<p class='note'>{esc(line)}</p>" for line in _footnotes(result))
    meta = "".join(f"<h3>{side}</h3>{_dl(meta_lines(result['meta'][side]))}" for side in ("base", "method")
                   if side in result.get("meta", {}))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>headgame eval comparison</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "tr.agg td{font-weight:bold;background:#f4f4f4}.note{color:#555;font-size:.9em;max-width:60em}"
        "dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0 0 1em}dd{margin:0}dt{color:#666}"
        "h2{font-size:1.1em;margin-top:1.6em}h3{font-size:1em;margin:.8em 0 .2em}</style></head><body>"
        f"<h1>headgame eval comparison</h1><p>Base: {esc(result['base'])}<br>Method: {esc(result['method'])}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(trs)}</tbody></table>{foot}"
        f"<ul>{notes}</ul>"
        f"<h2>Legend</h2>{_dl(list(result.get('legend', {}).items()))}{_dl(list(COLUMNS))}"
        f"<h2>Runs</h2>{meta}</body></html>\n"
    )


def to_json(result: dict) -> dict[str, Any]:
    return {
        "base": result["base"], "method": result["method"], "notes": result["notes"],
        "aggregates": result["aggregates"], "meta": result.get("meta"), "options": result.get("options"),
        "rows": [{**r.__dict__, "significant": r.significant, "small_sample": r.small_sample} for r in result["rows"]],
    }


def write_outputs(result: dict, out: Path, inputs: tuple[str, str]) -> list[Path]:
    """compare.md, compare.html, compare.json and the config (the inputs, their hashes, the options:
    config.yaml, or compare_config.yaml inside another run's folder)."""
    from headgame.models.identity import file_digest
    from headgame.report.runconfig import write_compare_config

    config = {"out": str(out), "inputs": {
        side: {"path": str(path), "sha256": file_digest(path), "model": result["meta"][side].get("model"),
               "model_hash": result["meta"][side].get("hash"), "adapter_hash": result["meta"][side].get("adapter_hash")}
        for side, path in zip(("base", "method"), inputs)}, "options": result.get("options", {})}
    return [write_text_atomic(out / "compare.md", to_markdown(result)),
            write_text_atomic(out / "compare.html", to_html(result)),
            write_json_atomic(out / "compare.json", to_json(result)),
            write_compare_config(out, "eval --compare", config)]
