"""Healing after pruning: 20 % of SmolLM2's heads, LoRA on N tokens, against the unpruned model
tuned on the same tokens (target: within 10 % of it in GSM8K and WikiText-2 perplexity).

One resumable stage per selection (``head``, ``group``): ``headgame prune --criterion ablation
--fraction 0.2 --heal-tokens N`` in ``~/.cache/headgame/prune-heal/<stage>`` (the healing runs
resume from their checkpoints). A finished stage's small results (pruning.json, config.yaml,
pruning_table.md; never weights) go to ``benchmarks/results/prune_heal/<stage>/`` and it is
skipped from then on; ``benchmarks/results/prune_heal.json`` summarises the finished stages.

    HEADGAME_DATA_DIR=../shared/data python benchmarks/prune_heal.py --threads 2 [--stages head,group] [--tokens 200000]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from _stages import headgame_bin, run_stage

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "prune_heal"
STAGES = {"head": ["--selection", "head"], "group": ["--selection", "group"]}
COMMON = ["--model", "smollm2-135m", "--criterion", "ablation", "--fraction", "0.2", "--no-progress"]
KEEP = ("pruning.json", "config.yaml", "pruning_table.md")


def heal_stage(name: str, tokens: int, work: Path, threads: int) -> None:
    out = work / name
    cmd = [headgame_bin(), "prune", *COMMON, *STAGES[name], "--heal-tokens", str(tokens), "--threads", str(threads)]
    # the healing runs keep their own checkpoints under OUT/heal: never wipe them
    run_stage(name, done=RESULTS / name, marker="pruning.json", out=out, resume=(out / ".prune-state.safetensors").exists(),
              command=cmd, keep=KEEP, restart=not (out / "heal").exists())


def report() -> dict:
    out: dict = {"benchmark": "prune_heal", "target": "healed pruned within 10 % of the healed unpruned model", "stages": {}}
    for folder in sorted(RESULTS.iterdir()) if RESULTS.is_dir() else []:
        if not (folder / "pruning.json").exists():
            continue
        res = json.loads((folder / "pruning.json").read_text())
        healed = res.get("healed", {})
        rec = healed.get("recovery", {})
        out["stages"][folder.name] = {
            "tokens": healed.get("tokens"), "method": healed.get("method"), "recovery": rec,
            "within_10pct": {s: r["healed_pruned_over_healed_unpruned"] <= 0.10 for s, r in rec.items()},
            "kv_heads_removed": res["results"]["ablation"].get("kv_heads_removed"), "device": res["device"],
            "timing": res["timing"],
        }
    tmp = HERE / "results" / "prune_heal.json.tmp"
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, HERE / "results" / "prune_heal.json")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="head,group")
    ap.add_argument("--tokens", type=int, default=200000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=os.environ.get("HEADGAME_BENCH_WORK", str(Path.home() / ".cache" / "headgame" / "prune-heal")))
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if not args.report:
        for name in [s.strip() for s in args.stages.split(",") if s.strip()]:
            if name not in STAGES:
                raise SystemExit(f"error: unknown stage {name}; choose from {', '.join(STAGES)}")
            heal_stage(name, args.tokens, Path(args.work), args.threads)
    print(json.dumps(report(), indent=1)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
