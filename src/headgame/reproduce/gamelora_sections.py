"""The sections of the game-lora reproduction report (text and tables), from report.json's dict."""

from __future__ import annotations

import math
from typing import Any

from headgame.report.doc import Doc, fmt


def _pm(mean: float, sd: float) -> str:
    return fmt(mean) if not math.isfinite(sd) else f"{fmt(mean)} ± {fmt(sd)}"


def _ci(ci: list[float]) -> str:
    return f"[{fmt(ci[0], 1)}, {fmt(ci[1], 1)}]"


def _p(p: float, resamples: int | None = None) -> str:
    """A p value; a bootstrap's 0 (no resample crossed zero) as '< 1/resamples'."""
    star = " *" if math.isfinite(p) and p < 0.05 else ""
    if p == 0 and resamples:
        return f"< {fmt(1 / resamples)}{star}"
    return fmt(p) + star


def _paper_delta(task: str, paper: dict, hib: bool) -> float:
    if task not in paper:
        return math.nan
    b, m = paper[task]
    return (m - b) / b * 100 * (1 if hib else -1)


def add_sections(doc: Doc, r: dict[str, Any], t1: dict | None) -> None:
    p = r["preset"]
    doc.p(f"Model {r['model']} ({r['n_layers']} layers; design layer {r['design_layer']}), preset {p['name']}: "
          f"{p['train_tokens']:,} training tokens per model (seq {p['seq_len']}, batch {p['batch_size']} × {p['grad_accum']}), "
          f"{p['n_items']} items per task (seed {r['config']['seed']}, the same items for every model), seeds "
          f"{', '.join(map(str, p['seeds']))}. Why this budget: {p['why']}.")
    if r["missing"]:
        doc.p(f"Not finished yet (rerun the command to continue): {', '.join(r['missing'])}.")
    _table1(doc, r, t1)
    _ablations(doc, r)
    _regression(doc, r)
    _coordination(doc, r)
    _poa(doc, r)
    _answers(doc, r)
    _cost(doc, r)
    doc.h("Sources")
    doc.p("Every number above is read from the stage files listed in report.json under 'sources' "
          "(stage.json, eval.json and analysis.json of each model folder).")


def _table1(doc: Doc, r: dict, t1: dict | None) -> None:
    doc.h("Table 1: LoRA-CE against GAME-LoRA")
    if not t1:
        doc.p("No seed has both a finished LoRA-CE and GAME-LoRA model yet.")
        return
    rows = []
    for row in t1["rows"]:
        paper = r["paper_table1"].get(row["task"])
        rows.append([row["label"], fmt(paper[0]) if paper else "–", fmt(paper[1]) if paper else "–",
                     fmt(_paper_delta(row["task"], r["paper_table1"], row["higher_is_better"]), 1),
                     _pm(row["base_mean"], row["base_sd"]), _pm(row["method_mean"], row["method_sd"]),
                     fmt(row["delta"], 1), _ci(row["delta_ci95"]), _p(row["p"], t1.get("resamples")), row["test"], str(row["n_items"])])
    for group, agg in t1["aggregates"].items():
        paper = r["paper_aggregates"].get(group)
        rows.append([agg["label"], "", "", fmt(paper, 1) if paper is not None else "–", "", "", fmt(agg["delta"], 1),
                     _ci(agg["ci95"]), _p(agg.get("p_two_sided", math.nan), t1.get("resamples")), f"{agg['n_tasks']} tasks", ""])
    doc.table(["task", "paper base", "paper GAME", "paper Δ%", "LoRA-CE (mean ± sd)", "GAME-LoRA", "Δ%", "95 % CI of Δ",
               "p", "test (pooled over seeds)", "items"], rows,
              note=f"{t1['n_seeds']} seed(s) ({', '.join(map(str, r['table1_seeds']))}). Δ% = relative change of the seed means, "
                   "sign flipped for WikiText bits per byte; the interval resamples the items (the same draw for every seed "
                   f"and both methods, {t1['resamples']:,} resamples); p pools the (seed, item) pairs: McNemar on binary "
                   "items, the paired bootstrap otherwise; * p < 0.05. Paper: Qwen2.5-0.5B, its Table 1.")
    sig = r.get("signal_aggregates") or {}
    if sig:
        doc.p("Over the tasks that carry signal for this model only (see 'Answers'): "
              + "; ".join(f"{g} Δ = {fmt(v['delta'], 1)} % over {len(v['tasks'])} task(s)" for g, v in sig.items()) + ".")


def _ablations(doc: Doc, r: dict) -> None:
    doc.h("Ablations")
    if not r["ablations"]:
        doc.p("No ablation ran (the cpu-full and gpu presets run them; --stages ablations).")
        return
    tasks = [row["task"] for row in next(iter(r["ablations"].values()))["rows"]]
    labels = {row["task"]: row["label"] for row in next(iter(r["ablations"].values()))["rows"]}
    rows = []
    for name, t in r["ablations"].items():
        by = {row["task"]: row for row in t["rows"]}
        cells = [f"{fmt(by[k]['delta'], 1)}{' *' if by[k]['p'] < 0.05 else ''}" if k in by else "–" for k in tasks]
        rows.append([name, *cells, fmt(t["aggregates"]["halluc"]["delta"], 1) + " " + _ci(t["aggregates"]["halluc"]["ci95"]),
                     fmt(t["aggregates"]["knowledge"]["delta"], 1) + " " + _ci(t["aggregates"]["knowledge"]["ci95"])])
    doc.table(["ablation", *[labels[k] for k in tasks], "Halluc Δ [CI]", "Knowledge Δ [CI]"], rows,
              note=f"Δ% of each ablation (1 seed) against LoRA-CE of the same seed ({r['ablation_reference']}), with the "
                   "item-bootstrap interval of the aggregates; * p < 0.05 (per-task paired test).")


def _regression(doc: Doc, r: dict) -> None:
    g = r["gamma_regression"]
    doc.h("Γ against hallucination")
    rows = []
    for label, fit in (("every model and checkpoint", g["all_points"]), ("one point per configuration", g["per_configuration"])):
        rows.append([label, str(fit["n"]), fmt(fit["slope"]), fmt(fit.get("slope_stderr", math.nan)), fmt(fit["r2"]), _p(fit["p"])])
    doc.table(["points", "n", "slope b", "s.e.", "R²", "two-sided p"], rows,
              note="OLS of y = mean error rate (1 − acc) over the six hallucination tasks on x = Γ(G) at the design layer "
                   "on the fixed held-out text. The paper says Γ predicts hallucination with p < 0.05 (b > 0 expected).")


def _coordination(doc: Doc, r: dict) -> None:
    doc.h("Selective coordination")
    rows = []
    for name, sc in sorted(r["selective_coordination"].items()):
        if not sc:
            rows.append([name, "–", "–", "–", "–", "–"])
            continue
        rows.append([name, fmt(sc.get("within_mean")), fmt(sc.get("between_mean")), fmt(sc.get("U")), _p(sc["p"] if sc.get("p") is not None else math.nan),
                     str(sc.get("n_within", "–")) + " / " + str(sc.get("n_between", "–"))])
    doc.table(["model", "within |G|", "between |G|", "U", "p (one-sided)", "pairs within / between"], rows,
              note=f"Mann–Whitney test of within- against between-coalition |G_ij| at the design layer; the paper reports "
                   f"p = {r['paper_selective_p']:.0e}.")
    rows = []
    for seed, c in sorted(r.get("selective_change", {}).items()):
        rows.append([seed, fmt(c.get("delta_within_mean")), fmt(c.get("delta_between_mean")), fmt(c.get("U")),
                     _p(c["p"] if c.get("p") is not None else math.nan), fmt(c.get("effect_size_r"))])
    if rows:
        doc.table(["seed", "Δ|G| within", "Δ|G| between", "U", "p (one-sided)", "effect r"], rows,
                  note="GAME-LoRA against LoRA-CE of the same seed, over LoRA-CE's coalitions: 'selective' means the "
                       "between-coalition coupling fell more than the within-coalition coupling (r > 0).")


def _poa(doc: Doc, r: dict) -> None:
    doc.h("The PoA bound with measured constants")
    if not r["poa"]:
        doc.p("Not measured in this run.")
        return
    rows = []
    for name, v in sorted(r["poa"].items()):
        rows.append([name, fmt(v["gamma"]), fmt(v["L"]), fmt(v["lambda_min"]), fmt(v["alpha"]), fmt(v["kappa_gamma2"]),
                     "yes" if v["finite"] else "no", fmt(v["bound"]), v.get("reason") or ""])
    doc.table(["model", "Γ", "L", "λ_min", "α used", "(L/α)Γ²", "finite", "bound (β = 0)", "why not finite"], rows,
              note="L: the largest eigenvalue of the Hessian of the mean CE loss in the design layer's head outputs "
                   "(Hessian-vector power iteration); α: its robust low quantile. The bound (1 + β_R + β_C)/(1 − (L/α)Γ²) "
                   "is finite only when α > 0 and (L/α)Γ² < 1; β_R and β_C are not measurable, so the value shown is its "
                   "lowest (β = 0).")


def _answers(doc: Doc, r: dict) -> None:
    doc.h("Answers: which tasks carry signal")
    rows = []
    for task, a in r["answers"]["tasks"].items():
        rows.append([task, str(a["models"]), fmt(a["top_share_mean"]), fmt(a["top_share_max"]), ", ".join(map(str, a["top_answers"]))[:40],
                     fmt(a["majority_baseline"]), f"{a['dominated_models']}", "yes" if a["signal"] else "no"])
    doc.table(["task", "models", "top-answer share (mean)", "max", "top answers", "majority-label baseline",
               "models with one answer ≥ 95 %", "carries signal"], rows,
              note="A task where one answer covers ≥ 95 % of the items for most models measures the label balance, not the "
                   "model: its accuracy is then about the majority-label baseline (or its complement). Tasks scored by the "
                   "likelihood of whole answers (MemoTrap, TruthfulQA, Winogrande) have no such baseline: their answer is an "
                   "option's position in the data file, which the model never sees (TruthfulQA's gold is always the first).")


def _cost(doc: Doc, r: dict) -> None:
    doc.h("Cost")
    rows = []
    for name, c in r["cost"].items():
        rows.append([name, *(fmt(c.get(k), 1) for k in ("stage_seconds", "seconds", "tokens_per_s", "eval_seconds",
                                                          "analyze_seconds", "poa_seconds"))])
    doc.table(["model", "stage s", "train s", "train tokens/s", "eval s", "analyze s", "PoA s"], rows,
              note="Wall seconds of each stage when it ran (a resumed stage counts only its last sitting).")
