"""The results of ``headgame prune`` from its measurements: one entry per pruned model, grouped by
criterion (random: every seed and their mean ± sd) and by fraction."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headgame.prune.criteria import Criterion
from headgame.prune.report import flat_metrics


@dataclass
class Variant:
    """One pruned model: which criterion (and seed) chose its heads, at which fraction."""

    key: str  # model key: "fep@0.2", "random#43@0.1"
    name: str  # the score's key: "fep", "random#43"
    criterion: Criterion
    seed: int
    fraction: float
    scores: np.ndarray  # [L, H]: the (first) scores the heads were ranked by
    removed: dict[int, list[int]]
    model: Any = None
    record: Any = None
    results: dict[str, Any] = field(default_factory=dict)


def fkey(fraction: float) -> str:
    """A fraction as a dictionary key: 0.2 -> "0.2"."""
    return f"{fraction:g}"


def rel(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or not old:
        return None
    return new / old - 1.0


def mean_sd(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": None, "sd": None, "n": 0, "min": None, "max": None}
    return {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else None, "n": len(v),
            "min": min(v), "max": max(v)}


def describe(name: str, v: Variant | None, *, flops: dict, ppl: dict, fwd: dict, gen: dict | None, evalsets: list,
             layout: Any, info: dict | None, ablation: np.ndarray | None) -> dict[str, Any]:
    """Everything measured of model ``name`` (``v`` None: the unpruned base)."""
    from headgame.info.scores import epsilon_nash, spearman
    from headgame.prune import cost

    base_an, base_me = flops["base"]["analytic"], flops["base"]["measured"]
    an, me = flops[name]["analytic"], flops[name]["measured"]
    res: dict[str, Any] = {
        "flops": {
            "analytic": {**an, "reduction_total": cost.reduction(base_an["total"], an["total"]),
                         "reduction_attention": cost.reduction(base_an["attention"], an["attention"])},
            "measured": {**me, "reduction_total": cost.reduction(base_me["total"], me["total"]),
                         "reduction_attention": cost.reduction(base_me["attention"], me["attention"])},
        },
        "perplexity": {},
        "throughput": {},
    }
    for es in evalsets:
        p = dict(ppl[name][es.name])
        if p.get("available") and name != "base" and ppl["base"][es.name].get("available"):
            b = ppl["base"][es.name]["ppl"]
            p["change_abs"], p["change_rel"] = p["ppl"] - b, rel(p["ppl"], b)
        res["perplexity"][es.name] = p
    if name in fwd:
        f = dict(fwd[name])
        f["flop_implied_speedup"] = flops["base"]["analytic_at_throughput_len"] / flops[name]["analytic_at_throughput_len"]
        f["gain"] = f["measured_speedup"] - 1.0
        fi = f["flop_implied_speedup"] - 1.0
        f["efficiency"] = (f["measured_speedup"] - 1.0) / fi if fi > 1e-12 else None
        res["throughput"]["forward"] = f
    if gen is not None and name in gen:
        res["throughput"]["generation"] = dict(gen[name])
    if v is None:
        return res
    res.update({
        "criterion": v.criterion.name, "seed": v.seed, "fraction": v.fraction, "n_pruned": sum(len(h) for h in v.removed.values()),
        "pruned_heads": {str(l): h for l, h in v.removed.items()},
        "heads_per_layer": v.record.heads_per_layer(),
        "kv_heads_per_layer": [len(v.record.kept_kv(l)) for l in range(layout.n_layers)],
        "kv_heads_removed": sum(layout.n_kv_heads - len(v.record.kept_kv(l)) for l in range(layout.n_layers))
        if layout.family_def.grouped_kv else None,
    })
    nash = None
    if info is not None:
        h1 = np.stack([info[l].scores["entropy"] for l in range(layout.n_layers)])
        fep_m = np.stack([info[l].scores["fep"] for l in range(layout.n_layers)])
        nash = epsilon_nash(fep_m, v.removed, h1).to_dict()
    if ablation is not None and v.criterion.name != "ablation":
        r, p = spearman(np.nan_to_num(v.scores, nan=0.0), ablation)
        res["spearman_vs_ablation"] = {"rho": r, "p": p}
        if nash is not None:
            nash.update(spearman_rho=r, spearman_p=p, spearman_score=v.criterion.name)
    if nash is not None:
        res["epsilon_nash"] = nash
    return res


def group_results(variants: list[Variant], crits: list[Criterion]) -> dict[str, Any]:
    """``{criterion: result}`` of one fraction; random: its runs and their mean ± sd."""
    results: dict[str, Any] = {}
    for crit in crits:
        group = [v for v in variants if v.criterion.name == crit.name]
        if not group:
            continue
        if crit.name == "random":
            runs = [v.results for v in group]
            keys = sorted({k for r in runs for k in flat_metrics(r)})
            results["random"] = {
                "criterion": "random", "seeds": [v.seed for v in group], "runs": runs,
                "summary": {k: mean_sd([flat_metrics(r).get(k) for r in runs]) for k in keys},
            }
        else:
            results[crit.name] = group[0].results
    return results


def run_notes(cfg: Any, notes: dict[str, str]) -> dict[str, str]:
    """The notes of pruning.json that say how each number was measured."""
    return {
        "flops": "analytic: 2 FLOPs per multiply-add of QKV/O projections, QKᵀ and AV (T keys per query), MLP and LM head, "
                 f"one sequence of {cfg.flops_seq_len} tokens; measured: FlopCounterMode on 1 x {cfg.flops_seq_len} with eager "
                 "attention (SDPA is counted as 0 FLOPs on CPU in torch 2.13)",
        "throughput": f"forward: batch {cfg.throughput_batch} x {cfg.throughput_seq_len}, {cfg.warmup} warm-up + {cfg.repeats} "
                      "timed rounds; in every round each pruned model runs right next to a base run (order alternating); "
                      "measured_speedup = median of those base runs / median of the pruned runs; flop_implied_speedup = "
                      "base analytic FLOPs / pruned analytic FLOPs; efficiency = (measured − 1)/(implied − 1); the random "
                      "criterion is timed for its first seed (all seeds prune the same number of heads)"
                      + ("; every model torch.compile'd (inductor), compiled during the warm-up" if cfg.compile else "; eager mode"),
        "generation": notes.get("generation", f"greedy, 1 x {cfg.gen_prompt} prompt, {cfg.gen_new_tokens} new tokens, "
                                f"{cfg.gen_repeats} timed rounds after 1 warm-up, paired with base like the forward pass; "
                                "timed for the primary criterion and random's first seed at --fraction"),
        "fep_score": "m_i^(≤3) truncates H(X_i | rest) at order 3 (docs/formulas.md); where a layer's pair and triple dividends are "
                     "large the truncation leaves [0, H_i] (it can be negative or exceed H_i), so ε and global rankings "
                     "across layers inherit that error; fep-exact is bounded but saturates",
        "perplexity": "exp(mean token NLL); GSM8K texts (\"Question: …\\nAnswer: …\") scored one by one, WikiText-2 in non-overlapping "
                      "windows" + ("" if cfg.heal_tokens else "; one-shot pruning, no fine-tuning" if not cfg.iterative_step
                                   else f"; iterative pruning in steps of {cfg.iterative_step:g} of the heads, no fine-tuning"),
        "selection": "group: whole GQA groups removed (a group ranked by the mean key of its query heads), so every removed "
                     "group removes a KV head" if cfg.selection == "group" else
                     "head: single query heads ranked; a KV head goes only when its whole group is pruned",
    }
