"""Overhead of analyze's per-batch work against a plain forward + backward.

On the embedded model (SmolLM2-135M), the same batches are run, interleaved in one process:

* plain:  forward + CE + activation-only backward (weights frozen, the same gradient scope
          analyze uses), no hooks;
* tapped: analyze's per-batch work: the same forward/backward with HeadTap hooks on every
          layer, streaming accumulation of the per-head gradient Gram (ρ, hence G) for all
          layers, and — with the default settings — the head-output moments behind the
          redundancy statistics.

Writes benchmarks/results/analyze_overhead.json with the median times, their ratio, tokens/s,
peak RSS, the device and a ``peak`` block: each variant's analytic FLOPs (forward + the
activation-only backward, ``headgame.prune.cost.step_flops(grad_to_layer=0)``: 2x the forward)
over its median time, as a fraction of the device's measured matmul peak
(``headgame.system.matmul_peak``). Run: make bench  (or .venv/bin/python
benchmarks/analyze_overhead.py [--device cuda] [--out FILE])
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from headgame.analyze.collect import CouplingCollector
from headgame.config import resolve_device, torch_dtype
from headgame.models.device import synchronize
from headgame.prune.cost import step_flops
from headgame.system import cpu_name, device_name, matmul_peak, package_versions, peak_fraction
from headgame.models.load import load_model
from headgame.models.objective import Objective
from headgame.models.tap import activation_gradients

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7, help="timed runs of each variant (median)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="float32", help="model dtype (and the dtype of the matmul peak)")
    ap.add_argument("--peak-n", type=int, default=None, help="matrix size of the matmul peak (default 2048 CPU, 8192 GPU)")
    ap.add_argument("--out", default=str(RESULTS / "analyze_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    model, tok, layout = load_model(args.model, dtype=args.dtype)
    model.to(device)
    objective = Objective(model, layout, tok)
    layers = list(range(layout.n_layers))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len), generator=gen).to(device)
               for _ in range(args.repeats + 1)]
    n_tokens = args.batch_size * args.seq_len

    def plain(ids):
        with activation_gradients(model):
            objective(ids, None).loss.backward()

    collectors = {
        "tapped": CouplingCollector(model, layout, objective, layers, redundancy=True),
        "tapped_g_only": CouplingCollector(model, layout, objective, layers, redundancy=False),
    }

    def tapped(name):
        def run(ids):
            with collectors[name] as c:
                c.step(ids, None)
        return run

    variants = {"plain": plain, "tapped": tapped("tapped"), "tapped_g_only": tapped("tapped_g_only")}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i, ids in enumerate(batches):
        for name, fn in variants.items():  # interleaved: every variant sees the same batch in turn
            synchronize(device)
            t0 = time.perf_counter()
            fn(ids)
            synchronize(device)  # a GPU clock stops when the work is done
            dt = time.perf_counter() - t0
            if i > 0:  # batch 0 is the warm-up
                times[name].append(dt)
        print(f"batch {i}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v), flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    peak = matmul_peak(device, torch_dtype(args.dtype), threads=args.threads, n=args.peak_n)
    # analyze's pass computes activation gradients only (activation_gradients freezes every weight
    # inside it): count it with the weights frozen, so no weight-gradient FLOPs are credited
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    work = step_flops(model, layout, args.seq_len, batch_size=args.batch_size, grad_to_layer=0)
    for p, flag in flags:
        p.requires_grad_(flag)
    result = {
        "benchmark": "analyze_overhead",
        "model": args.model,
        "batch": [args.batch_size, args.seq_len],
        "layers_tapped": len(layers),
        "repeats": args.repeats,
        "median_seconds": med,
        "all_seconds": times,
        "ratio": med["tapped"] / med["plain"],
        "ratio_g_only": med["tapped_g_only"] / med["plain"],
        "tokens_per_s": {k: n_tokens / v for k, v in med.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": device_name(args.threads) if device.type == "cuda" else f"cpu: {cpu_name()}, {args.threads} threads",
        "peak": {"device_peak": peak, "work": work,
                 "note": "work = analytic FLOPs of forward + activation-only backward (2x forward; hooks and accumulators "
                         "not counted), per batch; fraction = (work / median seconds) / the measured matmul peak",
                 **{k: peak_fraction(work["total"], v, peak) for k, v in med.items()}},
        "target": "ratio <= 1.08",
        "versions": package_versions(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio", "ratio_g_only", "tokens_per_s", "peak_rss_mb", "device")}, indent=1))
    print(json.dumps({k: round(v["fraction_of_peak"], 4) for k, v in result["peak"].items() if isinstance(v, dict) and "fraction_of_peak" in v}))


if __name__ == "__main__":
    main()
