"""Overhead of analyze's per-batch work against a plain forward + backward.

On the embedded model (SmolLM2-135M), the same batches are run, interleaved in one process:

* plain:  forward + CE + activation-only backward (weights frozen, the same gradient scope
          analyze uses), no hooks;
* tapped: analyze's per-batch work: the same forward/backward with HeadTap hooks on every
          layer, streaming accumulation of the per-head gradient Gram (ρ, hence G) for all
          layers, and — with the default settings — the head-output moments behind the
          redundancy statistics.

Writes benchmarks/results/analyze_overhead.json with the median times, their ratio, tokens/s,
peak RSS and the device. Run: make bench  (or .venv/bin/python benchmarks/analyze_overhead.py)
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
from headgame.system import cpu_name, package_versions
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
    ap.add_argument("--out", default=str(RESULTS / "analyze_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tok, layout = load_model(args.model)
    objective = Objective(model, layout, tok)
    layers = list(range(layout.n_layers))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len), generator=gen) for _ in range(args.repeats + 1)]
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
            t0 = time.perf_counter()
            fn(ids)
            dt = time.perf_counter() - t0
            if i > 0:  # batch 0 is the warm-up
                times[name].append(dt)
        print(f"batch {i}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v), flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
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
        "device": f"cpu: {cpu_name()}, {args.threads} threads",
        "target": "ratio <= 1.08",
        "versions": package_versions(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio", "ratio_g_only", "tokens_per_s", "peak_rss_mb", "device")}, indent=1))


if __name__ == "__main__":
    main()
