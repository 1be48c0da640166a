"""Step time of GAME-LoRA (Nash-MTL and sum arbitration) against plain CE LoRA.

Three trainers on the same model, data and batch take optimizer steps in turn (interleaved, so
machine noise hits all alike); the first steps are warm-up, the median of the rest is compared.
The λ schedule is in its constant phase for every timed step (p ≥ 0.02), so all three
GAME-LoRA tasks are active.

Writes benchmarks/results/train_overhead.json (ratio_nash_mtl, ratio_sum over ce, tokens/s,
peak memory, device). Run: .venv/bin/python benchmarks/train_overhead.py [--device-note ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from headgame.prune.cost import step_flops
from headgame.system import device_name, matmul_peak, package_versions, peak_fraction
from headgame.train.config import TrainConfig
from headgame.train.loop import Trainer

RESULTS = Path(__file__).resolve().parent / "results"
NOTE = ("Exact per-step Nash-MTL (the reference, --nash-gradients parameters) needs the L_ABT gradient on its own: a second "
        "backward from the design layer down through every layer at or below it (25 of SmolLM2's 30), about a third of a "
        "LoRA step. --nash-gradients representation takes the Gram at the design layer's block input and one backward "
        "below it (train/repnash.py); its timed steps include its calibration steps (one exact step after every 10). "
        "Reusing the weights for k steps (--nash-update-every k) takes one joint backward in between, like sum "
        "arbitration: ratio_nash_mtl_every_k. fraction_of_peak: the analytic FLOPs of a LoRA step (forward + one backward, "
        "prune/cost.step_flops) per second over the measured peak of a large matmul on the same device and threads.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (steps 0-1: λ still ramping)")
    ap.add_argument("--repeats", type=int, default=12, help="timed steps per variant (median); a multiple of every --nash-every")
    ap.add_argument("--nash-every", default="4", help="comma-separated --nash-update-every values to time besides the exact reference (1); '' for none")
    ap.add_argument("--mixed-precision", default="no")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (as headgame train --device)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default=str(RESULTS / "train_overhead.json"))
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.warmup + args.repeats
    # size the corpus for 100 optimizer steps so the timed ones sit at p >= 0.02 (phase 2)
    max_tokens = int(100 * args.batch_size * args.seq_len / 0.95) + args.seq_len
    common = dict(model=args.model, max_tokens=max_tokens, seq_len=args.seq_len, batch_size=args.batch_size,
                  val_every=0, checkpoint_every=0, mixed_precision=args.mixed_precision, device=args.device)
    variants = {
        "ce": TrainConfig(method="ce", out="/tmp/hg-bench-ce", **common),
        "game_lora_nash_mtl": TrainConfig(method="game-lora", arbitration="nash_mtl", out="/tmp/hg-bench-nash", **common),
        "game_lora_nash_mtl_representation": TrainConfig(method="game-lora", arbitration="nash_mtl", nash_gradients="representation",
                                                         out="/tmp/hg-bench-rep", **common),
        "game_lora_sum": TrainConfig(method="game-lora", arbitration="sum", out="/tmp/hg-bench-sum", **common),
    }
    every = [int(k) for k in args.nash_every.split(",") if k.strip()]
    for k in every:
        if k < 2 or args.repeats % k:
            raise SystemExit(f"--nash-every {k}: must be >= 2 and divide --repeats {args.repeats}")
        variants[f"game_lora_nash_mtl_every_{k}"] = TrainConfig(method="game-lora", arbitration="nash_mtl", nash_update_every=k,
                                                                 out=f"/tmp/hg-bench-nash{k}", **common)
    trainers = {k: Trainer(cfg, progress=False).setup() for k, cfg in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in trainers}
    calibration: list[float] = []  # the representation variant's exact (calibration) steps, timed apart
    for i in range(steps):
        for name, tr in trainers.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            rec = tr.train_step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                (calibration if "nash_calibration" in rec else times[name]).append(dt)
            print(f"step {i} {name}: {dt:.2f}s tasks={list(rec.get('nash_alpha', {}))}", flush=True)
    # a variant that recomputes α every k steps has one dear step per cycle of k: its cost is the
    # median over cycles of the mean step time in the cycle (repeats is a multiple of k)
    cycle = {name: (variants[name].nash_update_every if variants[name].arbitration == "nash_mtl" else 1) for name in times}
    med = {name: statistics.median(statistics.fmean(v[i:i + cycle[name]]) for i in range(0, len(v), cycle[name]))
           for name, v in times.items()}
    # the representation variant: one calibration step after every N representation steps, so
    # its cost per step is (N·median representation step + median calibration step) / (N + 1)
    rep, n_cal = "game_lora_nash_mtl_representation", variants["game_lora_nash_mtl_representation"].nash_calibrate_every
    rep_step = med[rep]
    if calibration and n_cal:
        med[rep] = (n_cal * rep_step + statistics.median(calibration)) / (n_cal + 1)
    tokens = args.batch_size * args.seq_len
    first = next(iter(trainers.values()))
    # the fraction of the machine's peak: a step's model FLOPs (forward + one backward, counted
    # analytically) over the measured peak of a large matmul in the step's compute dtype
    flops = step_flops(first.model, first.layout, args.seq_len, batch_size=args.batch_size)
    dev = first.acc.device
    peak = matmul_peak(dev.type if dev.index is None else f"{dev.type}:{dev.index}",
                       "bfloat16" if args.mixed_precision == "bf16" and dev.type == "cuda" else "float32",
                       torch.get_num_threads() if dev.type == "cpu" else None)
    result = {
        "benchmark": "train_overhead",
        "model": args.model,
        "batch": [args.batch_size, args.seq_len],
        "design_layer": first.design,
        "trainable_parameters": first.groups.n_elements,
        "repeats": args.repeats,
        "median_seconds": med,
        "all_seconds": times,
        "ratio_nash_mtl": med["game_lora_nash_mtl"] / med["ce"],
        "ratio_nash_mtl_representation": med[rep] / med["ce"],
        "ratio_nash_mtl_representation_step": rep_step / med["ce"],
        "representation_calibration_seconds": calibration,
        "representation_calibrate_every": n_cal,
        "ratio_sum": med["game_lora_sum"] / med["ce"],
        **{f"ratio_nash_mtl_every_{k}": med[f"game_lora_nash_mtl_every_{k}"] / med["ce"] for k in every},
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "step_flops": flops,
        "peak": peak,
        "fraction_of_peak": {k: peak_fraction(flops["total"], v, peak)["fraction_of_peak"] for k, v in med.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": device_name() if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "mixed_precision": args.mixed_precision,
        "target": "ratio_nash_mtl_representation <= 1.05",
        "note": NOTE,
        "versions": package_versions(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if torch.cuda.is_available():
        result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio") or k in ("tokens_per_s", "fraction_of_peak", "device")}, indent=1))


if __name__ == "__main__":
    main()
