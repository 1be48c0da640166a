"""Outputs of ``headgame prune``: pruning.json, a comparison table (Markdown + CSV), head scores.

Every file is written atomically. The table has one row for the unpruned model and one per
criterion; the random criterion shows mean ± sd over its seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from headgame.io import write_json_atomic, write_text_atomic

COLUMNS = [
    ("heads pruned", "n_pruned", "int"),
    ("KV heads removed", "kv_heads_removed", "int"),
    ("FLOPs −% (analytic)", "flops_reduction_analytic", "pct"),
    ("FLOPs −% (measured)", "flops_reduction_measured", "pct"),
    ("attn FLOPs −%", "attention_flops_reduction_analytic", "pct"),
    ("fwd tokens/s", "tokens_per_s", "f0"),
    ("speed-up (measured)", "measured_speedup", "f3"),
    ("speed-up (FLOP-implied)", "flop_implied_speedup", "f3"),
    ("gen tokens/s", "gen_tokens_per_s", "f1"),
]


def flat_metrics(res: dict[str, Any]) -> dict[str, float | None]:
    """The headline numbers of one variant, for tables and the random mean ± sd."""
    out: dict[str, float | None] = {
        "n_pruned": res.get("n_pruned"),
        "kv_heads_removed": res.get("kv_heads_removed"),
        "flops_reduction_analytic": res["flops"]["analytic"]["reduction_total"],
        "attention_flops_reduction_analytic": res["flops"]["analytic"]["reduction_attention"],
        "flops_reduction_measured": res["flops"]["measured"]["reduction_total"],
        "attention_flops_reduction_measured": res["flops"]["measured"]["reduction_attention"],
    }
    fw = res.get("throughput", {}).get("forward")
    if fw:
        out.update({"tokens_per_s": fw["tokens_per_s"], "measured_speedup": fw["measured_speedup"],
                    "flop_implied_speedup": fw["flop_implied_speedup"], "throughput_gain": fw["gain"]})
    gen = res.get("throughput", {}).get("generation")
    if gen:
        out.update({"gen_tokens_per_s": gen["tokens_per_s"], "gen_speedup": gen["measured_speedup"]})
    for name, p in res.get("perplexity", {}).items():
        if p.get("available"):
            out[f"ppl_{name}"] = p["ppl"]
            out[f"ppl_{name}_change"] = p.get("change_rel")
        if p.get("embedding"):  # encoders: cosine of the sentence embeddings with the unpruned model's
            out[f"cos_{name}"] = p["embedding"]["cosine_mean"]
    if res.get("epsilon_nash"):
        out["epsilon_bits"] = res["epsilon_nash"]["epsilon_bits"]
    return out


def _fmt(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if kind == "pct":
        return f"{100 * v:.1f}"
    if kind == "int":
        if isinstance(v, float) and not v.is_integer():
            return f"{v:.1f}"
        return f"{v:.0f}" if isinstance(v, (int, float)) else str(v)
    if kind.startswith("f"):
        return f"{v:.{int(kind[1:])}f}"
    return str(v)


def _cell(values: Mapping[str, Any], key: str, kind: str) -> str:
    v = values.get(key)
    if isinstance(v, Mapping):  # random: mean ± sd
        if v.get("mean") is None:
            return "–"
        return f"{_fmt(v['mean'], kind)} ± {_fmt(v['sd'], kind)}"
    return _fmt(v, kind)


def compact(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A table that fits an 80-column terminal: pruned heads, FLOP cut, speed-up (measured /
    FLOP-implied) and each perplexity with its change; random shows its mean over seeds."""
    sets = [s["name"] for s in result.get("data", {}).get("perplexity_sets", [])]
    base = flat_metrics({**result["base"], "n_pruned": 0})
    cos_sets = [s for s in sets if f"cos_{s}" in base]  # encoders: sentence-embedding cosine with the unpruned model
    header = ["model", "heads", "FLOPs−%", "speed-up"] + [f"{s} ppl" for s in sets] + [f"{s} cos" for s in cos_sets]

    def mean(values: Mapping[str, Any], key: str) -> Any:
        v = values.get(key)
        return v.get("mean") if isinstance(v, Mapping) else v

    def row(label: str, values: Mapping[str, Any], speed: str) -> list[str]:
        cells = [label, _fmt(mean(values, "n_pruned"), "int"), _fmt(mean(values, "flops_reduction_analytic"), "pct"), speed]
        for name in sets:
            ppl, change = mean(values, f"ppl_{name}"), mean(values, f"ppl_{name}_change")
            cells.append(_fmt(ppl, "f2") + ("" if change is None else f" {100 * change:+.0f}%"))
        return cells + [_fmt(mean(values, f"cos_{name}"), "f4") for name in cos_sets]

    rows = [row("unpruned", base, "1.000")]
    for name, res in result.get("results", {}).items():
        values = res["summary"] if name == "random" else flat_metrics(res)
        measured, implied = mean(values, "measured_speedup"), mean(values, "flop_implied_speedup")
        speed = "–" if measured is None else f"{measured:.3f}/{implied:.3f}"
        rows.append(row("random (mean)" if name == "random" else name, values, speed))
    return header, rows


def table(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table."""
    sets = [s["name"] for s in result.get("data", {}).get("perplexity_sets", [])]
    cols = list(COLUMNS) + [(f"{s} ppl", f"ppl_{s}", "f2") for s in sets] + [(f"{s} ppl Δ%", f"ppl_{s}_change", "pct") for s in sets]
    base = flat_metrics({**result["base"], "n_pruned": 0})
    cols += [(f"{s} emb. cos", f"cos_{s}", "f4") for s in sets if f"cos_{s}" in base]
    cols.append(("ε (bits)", "epsilon_bits", "f3"))
    header = ["model"] + [c[0] for c in cols]
    rows = [["unpruned"] + [_cell(base, key, kind) if key not in ("measured_speedup", "flop_implied_speedup") else "1.000"
                            for _, key, kind in cols]]
    for name, res in result.get("results", {}).items():
        values = res["summary"] if name == "random" else flat_metrics(res)
        label = f"random (mean ± sd, {len(res.get('seeds', []))} seeds)" if name == "random" else name
        rows.append([label] + [_cell(values, key, kind) for _, key, kind in cols])
    return header, rows


def markdown_table(result: Mapping[str, Any]) -> str:
    header, rows = table(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    m = result.get("model", {})
    dev = result.get("device", {})
    b = result.get("budget", {})
    foot = (f"\n{m.get('spec')} ({m.get('n_layers')} layers x {m.get('n_heads')} heads), "
            f"{'per-layer' if b.get('per_layer') else 'global'} pruning of {100 * b.get('fraction', 0):.0f}% of heads; "
            f"{dev.get('cpu')}, {dev.get('threads')} threads, {dev.get('dtype')}. One-shot, no fine-tuning.\n")
    return "\n".join(lines) + "\n" + foot


def _csv(header: list[str], rows: list[list[str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_prune_outputs(result: dict, head_scores: Mapping[str, np.ndarray], out: Path, *, config_yaml: str | None = None) -> list[Path]:
    out = Path(out)
    paths = [write_json_atomic(out / "pruning.json", result)]
    header, rows = table(result)
    paths.append(write_text_atomic(out / "pruning_table.md", markdown_table(result)))
    paths.append(write_text_atomic(out / "pruning_table.csv", _csv(header, rows)))
    names = list(head_scores)
    if names:
        first = next(iter(head_scores.values()))
        hs = [["layer", "head", *names]]
        for l in range(first.shape[0]):
            for h in range(first.shape[1]):
                hs.append([str(l), str(h), *(repr(round(float(head_scores[n][l, h]), 10)) for n in names)])
        paths.append(write_text_atomic(out / "head_scores.csv", _csv(hs[0], hs[1:])))
    if config_yaml is not None:
        paths.append(write_text_atomic(out / "config.yaml", config_yaml))
    return paths
