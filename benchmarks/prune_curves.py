"""Pruning curves of every criterion on the packaged models, one resumable stage per model.

Each stage is one ``headgame prune --fractions ... --compare-criteria`` run in a work folder
(``~/.cache/headgame/prune-curves/<model>``; ``--resume`` continues it after an interruption).
When a stage finishes, its small results (curves.json, curves.png, pruning.json,
pruning_table.md, head_scores.csv, config.yaml; never weights) are copied to
``benchmarks/results/prune_curves/<model>/`` and the stage is skipped from then on, so the
results can be committed as stages finish and a run continues on another machine.

    HEADGAME_DATA_DIR=../shared/data python benchmarks/prune_curves.py --models smollm2-135m --threads 2
    python benchmarks/prune_curves.py --report          # benchmarks/results/prune_curves.json from the finished stages
    python benchmarks/prune_curves.py --save-partial    # an unfinished stage's checkpoint into the repository
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from _stages import headgame_bin, run_stage

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "prune_curves"
FRACTIONS = "0.05,0.1,0.2,0.3,0.4"
CRITERIA = {
    "minilm-l6": "fep,random,ablation,michel,attention-entropy,gtfep-authors,fep-mm,fep-cs,fep-layer,shapley-exact",
    "smollm2-135m": "fep,random,ablation,michel,attention-entropy,gtfep-authors,fep-mm,fep-cs,fep-layer,shapley-exact",
    "gemma3-270m": "fep,random,ablation,michel,attention-entropy,gtfep-authors,fep-mm,fep-cs,fep-layer,shapley-exact",
}
COMMON = ["--fractions", FRACTIONS, "--fraction", "0.2", "--compare-criteria", "--random-seeds", "3",
          "--throughput-batch", "4", "--ppl-max-tokens", "4096", "--no-save-model", "--no-progress"]
# MiniLM has no MLM head: the tied-embedding proxy, labelled as such; 2 maskings (5 took 35 min of 60 models)
EXTRA = {"minilm-l6": ["--mlm-proxy", "--pseudo-ppl-seeds", "2"]}
PARTIAL = (".prune-state.safetensors", ".headgame-run.json")  # an unfinished stage's checkpoint (scores, perplexities; small)
KEEP = ("curves.json", "curves.png", "pruning.json", "pruning_table.md", "head_scores.csv", "config.yaml")


def run_one(model: str, work: Path, threads: int) -> None:
    done = RESULTS / model
    out = work / model
    partial = done / "partial"
    if not (done / "curves.json").exists() and not (out / PARTIAL[0]).exists() and (partial / PARTIAL[0]).exists():
        out.mkdir(parents=True, exist_ok=True)  # continue on another machine
        for f in PARTIAL:
            shutil.copy2(partial / f, out / f)
        print(f"{model}: continuing from the committed checkpoint {partial}", flush=True)
    cmd = [headgame_bin(), "prune", "--model", model, "--criteria", CRITERIA[model], *COMMON, *EXTRA.get(model, []),
           "--threads", str(threads)]
    if run_stage(model, done=done, marker="curves.json", out=out, resume=(out / PARTIAL[0]).exists(), command=cmd, keep=KEEP):
        shutil.rmtree(partial, ignore_errors=True)


def save_partial(models: list[str], work: Path) -> None:
    """Copy each unfinished stage's checkpoint into the repository, so another machine continues it."""
    for model in models:
        src = work / model
        if (src / PARTIAL[0]).exists() and not (RESULTS / model / "curves.json").exists():
            dst = RESULTS / model / "partial"
            dst.mkdir(parents=True, exist_ok=True)
            for f in PARTIAL:
                shutil.copy2(src / f, dst / f)
            print(f"{model}: checkpoint saved to {dst}")


def report() -> dict:
    """Per model: at every fraction, each criterion's perplexities and speed-up (random: mean ± sd)."""
    out: dict = {"models": {}}
    for folder in sorted(p for p in RESULTS.iterdir() if (p / "curves.json").exists()) if RESULTS.is_dir() else []:
        c = json.loads((folder / "curves.json").read_text())
        res = json.loads((folder / "pruning.json").read_text())
        out["models"][folder.name] = {"curves": c, "device": res["device"], "timing": res["timing"],
                                      "base": c["base"], "perplexity_sets": res["data"]["perplexity_sets"]}
    tmp = HERE / "results" / "prune_curves.json.tmp"
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, HERE / "results" / "prune_curves.json")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm-l6,smollm2-135m,gemma3-270m", help="comma-separated packaged models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=os.environ.get("HEADGAME_BENCH_WORK", str(Path.home() / ".cache" / "headgame" / "prune-curves")))
    ap.add_argument("--report", action="store_true", help="only (re)write the report from the finished stages")
    ap.add_argument("--save-partial", action="store_true", help="only copy unfinished stages' checkpoints into benchmarks/results")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.save_partial:
        save_partial(models, Path(args.work))
        return 0
    if not args.report:
        for model in models:
            if model not in CRITERIA:
                raise SystemExit(f"error: no curve settings for {model}; choose from {', '.join(CRITERIA)}")
            run_one(model, Path(args.work), args.threads)
    report()
    print(f"wrote {HERE / 'results' / 'prune_curves.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
