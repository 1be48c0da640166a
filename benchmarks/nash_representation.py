"""What representation-space Nash-MTL changes against the exact reference, on SmolLM2.

Three variants of GAME-LoRA, 138 optimizer steps each (``--max-tokens 150000``, batch 4 × 256),
seeds 42, 43, 44:

* ``parameters``   exact per-task gradients on the LoRA weights, α every step (the reference);
* ``representation`` α from the Gram at the Barlow-Twins layer's block input (train/repnash.py);
  the seed-42 run adds ``--nash-log-exact``, so on the same batches it logs the exact α beside
  the applied one (that costs time, not numbers: the update is the representation one);
* ``every4``       the exact α recomputed every 4 steps (``--nash-update-every 4``).

Each run is ``headgame train`` in a work folder outside the repo (it holds the adapter and
checkpoints); once it finishes, its small files (summary.json, metrics.jsonl, config.yaml) are
copied to ``benchmarks/results/nash_representation/<run>/``, and a run with that copy is skipped,
so the script resumes run by run (and a killed run resumes from its checkpoint). ``--report``
(also run at the end) writes ``benchmarks/results/nash_representation.json``:

* α agreement on the same batches (seed 42): Pearson correlation of log α and mean relative
  difference |α_rep − α_exact| / α_exact, per task, over the steps where both exist;
* per variant, over seeds: final Γ (the design layer, last step), raw L_ABT (mean over the last 10
  steps that carry it; the cool-down phase switches it off at the very end), final validation
  loss, and seconds per step; each as mean ± sd, and the largest |difference| of the
  representation mean from the reference mean in units of the reference's seed sd.

    python benchmarks/nash_representation.py --threads 2              # all runs, then the report
    python benchmarks/nash_representation.py --runs representation-s42 --threads 1
    python benchmarks/nash_representation.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from _stages import headgame_bin, run_stage

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "nash_representation"
SEEDS = (42, 43, 44)
VARIANTS = {
    "parameters": ["--nash-gradients", "parameters"],
    "representation": ["--nash-gradients", "representation"],
    "every4": ["--nash-gradients", "parameters", "--nash-update-every", "4"],
}
COMMON = ["--model", "smollm2-135m", "--method", "game-lora", "--max-tokens", "150000", "--seq-len", "256",
          "--batch-size", "4", "--val-every", "0", "--checkpoint-every", "20", "--keep-checkpoints", "1"]
KEEP = ("summary.json", "metrics.jsonl", "config.yaml")


def runs() -> dict[str, list[str]]:
    out = {}
    for seed in SEEDS:
        for name, flags in VARIANTS.items():
            extra = ["--nash-log-exact"] if name == "representation" and seed == 42 else []
            out[f"{name}-s{seed}"] = COMMON + flags + extra + ["--seed", str(seed)]
    return out


def run_one(name: str, flags: list[str], work: Path, threads: int) -> None:
    out = work / name
    resume = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    run_stage(name, done=RESULTS / name, marker="summary.json", out=out, resume=resume,
              command=[headgame_bin(), "train", *flags, "--threads", str(threads), "--no-progress"], keep=KEEP)


def _records(name: str) -> list[dict]:
    return [json.loads(l) for l in (RESULTS / name / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def alpha_agreement(name: str = "representation-s42") -> dict:
    rows = [r for r in _records(name) if "nash_alpha_exact" in r and "nash_alpha" in r and "nash_calibration" not in r]
    out: dict = {"run": name, "steps": len(rows)}
    for task in sorted({t for r in rows for t in r["nash_alpha"]}):
        pairs = [(r["nash_alpha"][task], r["nash_alpha_exact"][task]) for r in rows if task in r["nash_alpha_exact"]]
        rep, ex = [p[0] for p in pairs], [p[1] for p in pairs]
        rel = [abs(a - b) / b for a, b in pairs]
        out[task] = {"n": len(pairs), "pearson_log_alpha": _pearson([math.log(a) for a in rep], [math.log(b) for b in ex]),
                     "pearson_alpha": _pearson(rep, ex), "mean_rel_diff": statistics.fmean(rel), "max_rel_diff": max(rel),
                     "mean_alpha_rep": statistics.fmean(rep), "mean_alpha_exact": statistics.fmean(ex)}
    return out


def _agreement(pairs: list[tuple[float, float]]) -> dict:
    rep, ex = [p[0] for p in pairs], [p[1] for p in pairs]
    rel = [abs(a - b) / b for a, b in pairs]
    return {"n": len(pairs), "pearson_log_alpha": _pearson([math.log(a) for a in rep], [math.log(b) for b in ex]),
            "mean_rel_diff": statistics.fmean(rel), "max_rel_diff": max(rel)}


def approximations(name: str = "representation-s42", intervals=(1, 5, 10, 20)) -> dict:
    """Other stand-ins for the below-cut Gram, scored on the logged pieces of the same batches.

    Every step of the ``--nash-log-exact`` run logs the K×K Grams above the cut (A), at it (C)
    and below it (B, exact). The exact α solves A + B = M (their supports are disjoint). Each
    variant replaces B, using an exact B only from a "calibration" step every ``k`` steps:

    * ``per_task_gain_k``: B_ij ≈ √(s_i s_j)·C_ij, s_i = B_ii / C_ii at the last calibration;
    * ``normalised_below_k``: B_ij ≈ B̂_ij·√(C_ii C_jj), B̂ = B_ij / √(C_ii C_jj) at the last calibration.

    ``applied`` is the α the run took (train/repnash.py: the calibration's gain ratios rescaled by
    the previous step's measured gain, a calibration after every 10 steps); ``reuse_every_k`` the
    exact α reused for k steps, what ``--nash-update-every k`` does, as a yardstick.
    """
    import numpy as np

    sys.path.insert(0, str(HERE.parent / "src"))
    from headgame.game.nash_mtl import solve_nash_weights

    rows = [r for r in _records(name) if "nash_grams" in r]
    if not rows:
        return {}
    names = list(rows[0]["nash_alpha"])
    out: dict = {}
    exact = [solve_nash_weights(np.array(r["nash_grams"]["above"]) + np.array(r["nash_grams"]["below"])).alpha for r in rows]
    applied = [np.array([r["nash_alpha"][n] for n in names]) for r in rows]
    skip = {i for i, r in enumerate(rows) if "nash_calibration" in r}

    def score(alphas, skip):  # agreement on the steps that are not exact (calibration) steps
        return {n: _agreement([(float(a[j]), float(e[j])) for i, (a, e) in enumerate(zip(alphas, exact)) if i not in skip])
                for j, n in enumerate(names)}

    out["applied"] = score(applied, skip)
    # the yardstick of --nash-update-every k: the exact α of the last step that recomputed it
    for k in (2, 4):
        out[f"reuse_every_{k}"] = score([exact[i - i % k] for i in range(len(rows))], {i for i in range(len(rows)) if i % k == 0})
    for k in intervals:
        for variant in ("per_task_gain", "normalised_below", "gain_ratio"):
            alphas, ref, calib, s_prev = [], None, set(), None
            for i, r in enumerate(rows):
                a_, c_, b_ = (np.array(r["nash_grams"][x]) for x in ("above", "cut", "below"))
                if ref is None or i % k == 0:
                    ref = (b_, c_)
                    alphas.append(exact[i])
                    calib.add(i)
                    s_ref = s_prev = float(exact[i] @ b_ @ exact[i]) / float(exact[i] @ c_ @ exact[i])
                    continue
                rb, rc = ref
                if variant == "gain_ratio":  # per-task gains of the calibration, rescaled by the last step's measured gain
                    q = np.where(np.diag(rc) > 0, np.diag(rb) / np.where(np.diag(rc) > 0, np.diag(rc), 1), 0.0) / s_ref
                    s_k = q * s_prev
                    below = np.sqrt(np.outer(s_k, s_k)) * c_
                    alpha = solve_nash_weights(a_ + below).alpha
                    s_prev = float(alpha @ b_ @ alpha) / float(alpha @ c_ @ alpha)
                    alphas.append(alpha)
                    continue
                if variant == "per_task_gain":
                    s_ = np.where(np.diag(rc) > 0, np.diag(rb) / np.where(np.diag(rc) > 0, np.diag(rc), 1), 0.0)
                    below = np.sqrt(np.outer(s_, s_)) * c_
                else:
                    dn = np.sqrt(np.diag(rc))
                    bhat = rb / np.where(np.outer(dn, dn) > 0, np.outer(dn, dn), 1)
                    below = bhat * np.sqrt(np.outer(np.diag(c_), np.diag(c_)))
                alphas.append(solve_nash_weights(a_ + below).alpha)
            res = score(alphas, calib) if len(calib) < len(rows) else {}
            res["calibration_share"] = 1 / k
            out[f"{variant}_{k}"] = res
    return out


def finals(name: str) -> dict:
    recs = _records(name)
    summary = json.loads((RESULTS / name / "summary.json").read_text())
    abt = [r["abt_raw"] for r in recs if "abt_raw" in r][-10:]
    timed = [r["seconds"] for r in recs[2:]]
    return {"gamma": recs[-1]["gamma"], "abt_raw_last10": statistics.fmean(abt), "val_loss": summary["final_val_loss"],
            "seconds_per_step": statistics.median(timed), "steps": summary["steps"]}


def report() -> dict:
    have = {n for n in runs() if (RESULTS / n / "summary.json").exists()}
    per_run = {n: finals(n) for n in sorted(have)}
    variants: dict = {}
    for v in VARIANTS:
        got = [per_run[f"{v}-s{s}"] for s in SEEDS if f"{v}-s{s}" in per_run]
        if not got:
            continue
        variants[v] = {"seeds": len(got)}
        for key in ("gamma", "abt_raw_last10", "val_loss", "seconds_per_step"):
            vals = [g[key] for g in got]
            variants[v][key] = {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else None, "values": vals}
    agree: dict = {}
    ref = variants.get("parameters")
    for v in ("representation", "every4"):
        if ref and v in variants and ref["seeds"] > 1:
            agree[v] = {key: (variants[v][key]["mean"] - ref[key]["mean"]) / ref[key]["sd"] if ref[key]["sd"] else None
                        for key in ("gamma", "abt_raw_last10", "val_loss")}
    out = {
        "benchmark": "nash_representation", "model": "smollm2-135m", "runs_done": sorted(have),
        "runs_planned": sorted(runs()), "command": " ".join(COMMON),
        "alpha_agreement": alpha_agreement() if "representation-s42" in have else None,
        "other_approximations": approximations() if "representation-s42" in have else None,
        "variants": variants,
        "difference_in_reference_sds": agree,
        "rule": "representation becomes the default only if every |difference| is within the reference's seed sd (≤ 1)",
        "date": time.strftime("%Y-%m-%d"),
    }
    (HERE / "results" / "nash_representation.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="", help="comma-separated run names (default: all, seed 42 first)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=os.environ.get("HEADGAME_BENCH_WORK", str(Path.home() / ".cache" / "headgame" / "nash-representation")))
    ap.add_argument("--report", action="store_true", help="only (re)write the report from the finished runs")
    args = ap.parse_args()
    if not args.report:
        todo = runs()
        names = [n for n in args.runs.split(",") if n] or list(todo)
        unknown = [n for n in names if n not in todo]
        if unknown:
            raise SystemExit(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(todo)}")
        for n in names:
            run_one(n, todo[n], Path(args.work), args.threads)
    print(json.dumps(report(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
