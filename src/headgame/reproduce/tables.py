"""The statistics of the game-lora reproduction report, from the models' eval.json and analysis
results. Pure (numpy and scipy only).

* :func:`seed_table`: the paper's Table 1 over seeds. Per task the mean ± sd of each method's
  score over seeds; the relative Δ of the means (docs/formulas.md#relative-delta); a 95 % interval
  of Δ from resampling the items (the same draw for every seed and both methods, since every model
  answered the same items); the paired test on the (seed, item) pairs pooled over seeds (McNemar
  for binary items, else the paired bootstrap); Halluc Δ and Knowledge Δ with intervals from the
  same item resamples.
* :func:`regression`: OLS of the hallucination error rate on Γ (docs/formulas.md#gamma-regression).
* :func:`answer_shares`: per task the share of the most frequent answer and the majority-label
  baseline, flagging tasks where one answer covers ≥ 95 % of the items.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from headgame.evaluate.stats import mcnemar, paired_bootstrap, ratio_score, relative_delta

GROUPS = {"halluc": "Halluc Δ", "knowledge": "Knowledge Δ"}
DOMINANT = 0.95
"""A task where one answer covers this share of the items or more carries little signal."""


def _items(task: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {it["id"]: it for it in task.get("items", [])}


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(xs, float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else math.nan)


def seed_table(base: Sequence[dict], method: Sequence[dict], *, resamples: int = 10_000, seed: int = 0,
               tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """Table 1 of ``method`` against ``base``: two lists of eval.json dicts paired by seed."""
    if not base or len(base) != len(method):
        raise ValueError(f"seed_table needs the same number (≥ 1) of base and method runs, got {len(base)} and {len(method)}")
    names = [t for t in (tasks or base[0]["tasks"]) if all(t in e["tasks"] for e in (*base, *method))]
    rng = np.random.default_rng(seed)
    rows, boot = [], {}
    for name in names:
        first = base[0]["tasks"][name]
        transform, hib = first.get("transform", "identity"), bool(first.get("higher_is_better", True))
        per = [_items(e["tasks"][name]) for e in (*base, *method)]
        common = sorted(set.intersection(*(set(p) for p in per)), key=str)
        if not common:
            continue
        num = np.array([[p[i]["num"] for i in common] for p in per], float)  # [2S, n]
        den = np.array([[p[i]["den"] for i in common] for p in per], float)
        s = len(base)
        scores = np.array([ratio_score(num[k], den[k], transform) for k in range(2 * s)])
        b_mean, b_sd = _mean_sd(scores[:s])
        m_mean, m_sd = _mean_sd(scores[s:])
        delta = relative_delta(b_mean, m_mean, hib)
        n = len(common)
        idx = rng.integers(0, n, size=(resamples, n))
        with np.errstate(invalid="ignore", divide="ignore"):
            rs = num[:, idx].sum(axis=2) / den[:, idx].sum(axis=2)  # [2S, B]
            rs = np.exp(rs) if transform == "exp" else rs
            bm, mm = rs[:s].mean(axis=0), rs[s:].mean(axis=0)
            d = (mm - bm) / np.abs(bm) * 100.0 * (1 if hib else -1)
        d[~np.isfinite(d)] = np.nan  # a resample whose base score is 0 has no relative change
        boot[name] = d
        lo, hi = np.nanpercentile(d, [2.5, 97.5])
        binary = all(e["tasks"][name].get("binary", False) for e in (*base, *method))
        if binary:
            res = mcnemar(num[:s].ravel(), num[s:].ravel())
            test, p = f"McNemar (b={res['b']}, c={res['c']})", res["p"]
        else:
            res = paired_bootstrap(num[:s].ravel(), den[:s].ravel(), num[s:].ravel(), den[s:].ravel(), transform,
                                   resamples=resamples, seed=seed)
            test, p = f"paired bootstrap ({res['resamples']})", res["p"]
        rows.append({
            "task": name, "label": first.get("label", name), "group": first.get("group", "extra"), "metric": first.get("metric", ""),
            "higher_is_better": hib, "base_mean": b_mean, "base_sd": b_sd, "method_mean": m_mean, "method_sd": m_sd,
            "base_seeds": scores[:s].tolist(), "method_seeds": scores[s:].tolist(),
            "delta": delta, "delta_ci95": [float(lo), float(hi)], "n_items": n, "n_pairs": n * s, "test": test, "p": p,
        })
    aggregates = {}
    for group, label in GROUPS.items():
        members = [r for r in rows if r["group"] == group and math.isfinite(r["delta"])]
        if not members:
            aggregates[group] = {"label": label, "delta": math.nan, "ci95": [math.nan, math.nan], "n_tasks": 0}
            continue
        stack = np.vstack([boot[r["task"]] for r in members])  # tasks resampled independently
        agg = np.nanmean(stack, axis=0)
        lo, hi = np.nanpercentile(agg, [2.5, 97.5])
        aggregates[group] = {"label": label, "delta": float(np.mean([r["delta"] for r in members])),
                             "ci95": [float(lo), float(hi)], "n_tasks": len(members),
                             "p_two_sided": float(min(1.0, 2 * min(np.mean(agg <= 0), np.mean(agg >= 0))))}
    return {"rows": rows, "aggregates": aggregates, "n_seeds": len(base), "resamples": resamples}


def halluc_error(scores: dict[str, float], halluc: Sequence[str]) -> float:
    """The mean error rate 1 − acc over the hallucination tasks present (docs/formulas.md#gamma-regression)."""
    vals = [1.0 - scores[t] for t in halluc if t in scores and math.isfinite(scores[t])]
    return float(np.mean(vals)) if vals else math.nan


def regression(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """OLS y = a + b·x: slope b, intercept a, R², the two-sided p of b (t with n − 2 dof), n."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    n = len(xa)
    if n < 3 or np.ptp(xa) == 0:
        return {"n": n, "slope": math.nan, "intercept": math.nan, "r2": math.nan, "p": math.nan,
                "note": "fewer than 3 points with distinct Γ: no regression"}
    fit = sps.linregress(xa, ya)
    return {"n": n, "slope": float(fit.slope), "intercept": float(fit.intercept), "r2": float(fit.rvalue ** 2),
            "p": float(fit.pvalue), "slope_stderr": float(fit.stderr)}


def _answer(item: dict[str, Any]) -> Any:
    for key in ("answer", "verdict", "pred"):
        if key in item and item[key] is not None:
            v = item[key]
            return v.strip().lower() if isinstance(v, str) else v
    return None


def answer_shares(ev: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task: the model's most frequent answer and its share; the majority-label baseline
    (the accuracy of always giving the most frequent gold answer) where the model answers with a
    label (``Task.labels``: Yes/No, A-D). Tasks scored by the likelihood of whole answers get
    none: their gold index is a position in the data file (TruthfulQA's is always 0), which the
    model never sees."""
    from headgame.evaluate.tasks import TASKS

    out = {}
    for name, task in ev["tasks"].items():
        items = task.get("items", [])
        answers = [a for a in (_answer(it) for it in items) if a is not None and a != ""]
        row: dict[str, Any] = {"n": len(items), "answered": len(answers)}
        if answers:
            top, count = Counter(map(str, answers)).most_common(1)[0]
            row.update(top_answer=top, top_share=count / len(items))
        golds = [str(it["gold"]) for it in items if it.get("gold") is not None]
        task_cls = TASKS.get(name) if name in TASKS else None
        if golds and task_cls is not None and task_cls.labels:
            g, count = Counter(golds).most_common(1)[0]
            row.update(majority_label=g, majority_baseline=count / len(golds))
        row["dominated"] = bool(row.get("top_share", 0.0) >= DOMINANT)
        out[name] = row
    return out
