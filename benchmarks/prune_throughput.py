"""Measured forward-throughput gain of head pruning against the gain its FLOPs promise.

On the embedded model (SmolLM2-135M) with 20 % of the heads pruned by the GT-FEP criterion
(physically removed: headgame.models.surgery), the unpruned and the pruned model are timed on
the same batch (8 x 256 tokens, forward pass, torch.inference_mode), interleaved in one process
(base, pruned, base, pruned, ... with the starting model alternating), after warm-up rounds.

* measured_speedup     = median base time / median pruned time
* flop_implied_speedup = analytic base FLOPs / analytic pruned FLOPs (headgame.prune.cost)
* efficiency           = (measured_speedup − 1) / (flop_implied_speedup − 1): the share of the
                         promised gain that is real. Target: ≥ 0.9.

Two execution modes are timed, each base/pruned pair in the same mode: eager (the default
Hugging Face forward, as ``headgame prune`` measures it; the headline fields) and torch.compile
(inductor, which fuses the element-wise work — RMSNorm, SiLU·up, residual adds — that head
pruning cannot shrink and that eager mode runs as separate memory-bound kernels). The share of
eager time spent in matmul/attention kernels is recorded too: it bounds what FLOPs can explain.

Also recorded: the median of the per-round paired ratios, the number of rounds visibly slowed by
other processes (either model above 1.5x its fastest time), process CPU-time medians, measured
FLOPs, the pruned heads, the load average, device and versions, and a ``peak`` block: each
model's analytic forward FLOPs of the batch over its median time in each mode, as a fraction of
the CPU's measured matmul peak (``headgame.system.matmul_peak``: how far a forward of this
size is from the fastest dense work of these cores). Writes benchmarks/results/prune_throughput.json. Run:
  .venv/bin/python benchmarks/prune_throughput.py [--from-pruning P/pruning.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from headgame.models.load import load_model
from headgame.models.surgery import pruned_copy
from headgame.prune import cost
from headgame.system import cpu_name, matmul_peak, package_versions, peak_fraction

RESULTS = Path(__file__).resolve().parent / "results"


def fep_pruning(model, tok, layout, args) -> tuple[dict[int, list[int]], str]:
    """Heads to prune: from a pruning.json of headgame prune, or a fresh GT-FEP ranking."""
    from headgame.data.texts import load_sequences, resolve_source
    from headgame.fep.run import analyse_symbols
    from headgame.info.analysis import InfoOptions
    from headgame.measure.select import select_heads
    from headgame.measure.symbols import collect_symbols
    from headgame.prune.criteria import get_criterion

    if args.from_pruning:
        res = json.loads(Path(args.from_pruning).read_text())
        heads = res["results"][res["primary"]]["pruned_heads"]
        return {int(l): h for l, h in heads.items()}, f"{res['primary']} ranking from {args.from_pruning}"
    source = resolve_source("auto", None)
    seqs = load_sequences(source, tok, causal=layout.causal, max_tokens=args.score_tokens, seq_len=256)
    sym = collect_symbols(model, layout, seqs.input_ids, seqs.attention_mask, batch_size=4)
    infos = analyse_symbols(sym, InfoOptions(bootstrap=0, mcmc_steps=0))
    scores = np.stack([infos[l].scores["fep"] for l in range(layout.n_layers)])
    return select_heads(get_criterion("fep").pruning_key(scores), args.fraction), f"fep ranking on {seqs.n_tokens} tokens of {source}"


def time_pair(models: dict, ids: torch.Tensor, args, implied: float, label: str) -> dict:
    """Base and pruned forward passes in alternating order, ``args.repeats`` timed rounds after warm-up."""
    wall: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.warmup + args.repeats):
        order = ["base", "pruned"] if r % 2 == 0 else ["pruned", "base"]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            with torch.inference_mode():
                models[name](input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if r >= args.warmup:
                wall[name].append(dt)
                cpu[name].append(dc)
        if r >= args.warmup:
            print(f"{label} round {r - args.warmup + 1}/{args.repeats}: base {wall['base'][-1]:.3f}s pruned {wall['pruned'][-1]:.3f}s", flush=True)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    measured = med["base"] / med["pruned"]
    paired = statistics.median(b / p for b, p in zip(wall["base"], wall["pruned"]))
    cpu_speedup = med_cpu["base"] / med_cpu["pruned"]
    tokens = args.batch_size * args.seq_len
    return {
        "median_seconds": med,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "measured_speedup": measured,
        "efficiency": (measured - 1.0) / (implied - 1.0),
        "paired_ratio_median": paired,
        "efficiency_paired": (paired - 1.0) / (implied - 1.0),
        # rounds slowed by other processes on a shared machine (either model > 1.5x its fastest run)
        "contended_rounds": sum(1 for b, p in zip(wall["base"], wall["pruned"]) if b > 1.5 * min(wall["base"]) or p > 1.5 * min(wall["pruned"])),
        "cpu_time_median_seconds": med_cpu,
        "cpu_time_speedup": cpu_speedup,
        "all_seconds": wall,
    }


def matmul_share(model, ids: torch.Tensor) -> float:
    """Share of one eager forward's CPU time spent in matmuls and attention kernels (the FLOP-carrying ops)."""
    from torch.profiler import profile

    with profile() as prof, torch.inference_mode():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    flop_ops = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")
                   or "scaled_dot_product" in e.key)
    return flop_ops / total if total else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--from-pruning", default=None, help="pruning.json of headgame prune: reuse its primary pruned heads")
    ap.add_argument("--score-tokens", type=int, default=16384)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds (each runs both models)")
    ap.add_argument("--repeats", type=int, default=21, help="timed rounds (median)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile (inductor) timing")
    ap.add_argument("--peak-n", type=int, default=None, help="matrix size of the matmul peak (default 2048)")
    ap.add_argument("--out", default=str(RESULTS / "prune_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tok, layout = load_model(args.model)
    removed, how = fep_pruning(model, tok, layout, args)
    pruned, rec = pruned_copy(model, layout, removed)
    vocab = int(model.config.vocab_size)
    an_base, an_pruned = cost.analytic_flops(model, layout, args.seq_len), cost.analytic_flops(pruned, layout, args.seq_len)
    me_base, me_pruned = cost.measured_flops(model, layout, args.seq_len), cost.measured_flops(pruned, layout, args.seq_len)

    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(0))
    implied = an_base["total"] / an_pruned["total"]
    modes = {"eager": time_pair({"base": model, "pruned": pruned}, ids, args, implied, "eager")}
    modes["eager"]["matmul_time_share_base"] = matmul_share(model, ids)
    if args.compile:
        compiled = {"base": torch.compile(model), "pruned": torch.compile(pruned)}
        t0 = time.perf_counter()
        with torch.inference_mode():
            for m in compiled.values():
                m(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        modes["torch_compile"] = time_pair(compiled, ids, args, implied, "torch.compile")
        modes["torch_compile"]["compile_seconds"] = time.perf_counter() - t0
    eager = modes["eager"]
    peak = matmul_peak("cpu", torch.float32, threads=args.threads, n=args.peak_n)
    work = {"base": an_base["total"] * args.batch_size, "pruned": an_pruned["total"] * args.batch_size}
    peak_block = {"device_peak": peak, "work_flops": work,
                  "note": "work = analytic forward FLOPs (headgame.prune.cost.analytic_flops) x batch; fraction = (work / "
                          "median seconds) / the measured matmul peak",
                  **{mode: {k: peak_fraction(work[k], v, peak) for k, v in m["median_seconds"].items()} for mode, m in modes.items()}}
    result = {
        "benchmark": "prune_throughput",
        "model": args.model,
        "pruning": {"fraction": args.fraction, "how": how, "n_pruned": rec.n_removed, "n_heads": layout.n_layers * layout.n_heads,
                    "kv_heads_removed": sum(layout.n_kv_heads - len(rec.kept_kv(l)) for l in range(layout.n_layers)),
                    "heads_per_layer": rec.heads_per_layer(), "pruned_heads": {str(l): h for l, h in removed.items()}},
        "batch": [args.batch_size, args.seq_len],
        "warmup": args.warmup,
        "repeats": args.repeats,
        # headline: the default (eager) Hugging Face execution, as headgame prune measures it
        "mode": "eager",
        "measured_speedup": eager["measured_speedup"],
        "flop_implied_speedup": implied,
        "efficiency": eager["efficiency"],
        "median_seconds": eager["median_seconds"],
        "tokens_per_s": eager["tokens_per_s"],
        "target": "efficiency >= 0.9",
        "met": eager["efficiency"] >= 0.9,
        "modes": modes,
        "flops": {
            "analytic": {"base": an_base["total"], "pruned": an_pruned["total"], "reduction": cost.reduction(an_base["total"], an_pruned["total"]),
                         "attention_reduction": cost.reduction(an_base["attention"], an_pruned["attention"]),
                         "components_base": an_base["components"], "components_pruned": an_pruned["components"]},
            "measured": {"base": me_base["total"], "pruned": me_pruned["total"], "reduction": cost.reduction(me_base["total"], me_pruned["total"]),
                         "method": me_base["method"]},
            "seq_len": args.seq_len,
        },
        "peak": peak_block,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": f"cpu: {cpu_name()}, {args.threads} threads, float32",
        "load_average_1m": Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else None,
        "versions": package_versions(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if "torch_compile" in modes:
        result["efficiency_torch_compile"] = modes["torch_compile"]["efficiency"]
        result["met_torch_compile"] = modes["torch_compile"]["efficiency"] >= 0.9
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    keys = ("measured_speedup", "flop_implied_speedup", "efficiency", "efficiency_torch_compile", "median_seconds")
    print(json.dumps({k: result.get(k) for k in keys}, indent=1))


if __name__ == "__main__":
    main()
