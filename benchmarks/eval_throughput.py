"""Throughput of headgame's scorer against lm-evaluation-harness on the same model and items.

For each task (TruthfulQA MC2 and MMLU by default) both sides score the same sampled items
with the same model object, fp32, on the CPU: headgame through ``HFScorer.loglikelihood``
(shared-prefix KV caching), lm-eval 0.4.13 through ``simple_evaluate`` with ``HFLM`` at batch 8
(offline, local files, via :mod:`headgame.evaluate.lm_eval_bridge`). Reported: items/s, input
tokens/s (Σ over requests of context + continuation tokens, the same count for both) and
``ratio`` = headgame items/s ÷ lm-eval items/s. MMLU items are those of the N = 1024 draw in
its first subjects (a full run's density of items per subject, so its few-shot preamble is
shared as in a full run). One warm-up item per side first; the machine's
load average is recorded because timings on a shared machine are noisy.

    python benchmarks/eval_throughput.py --model smollm2-135m --limit 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from headgame.evaluate.config import EvalConfig  # noqa: E402
from headgame.evaluate.lm_eval_bridge import build_tasks, run_lm_eval  # noqa: E402
from headgame.evaluate.runner import build_scorer, load_for_eval  # noqa: E402
from headgame.evaluate.scorer import HFScorer  # noqa: E402
from headgame.evaluate.tasks import TASKS, TaskOptions, sample_indices  # noqa: E402
from headgame.io import write_json_atomic  # noqa: E402
from headgame.system import cpu_name, package_versions  # noqa: E402


def task_items(name: str, data_dir: str | None, limit: int, mmlu_subjects: int, seed: int = 42) -> list[int]:
    """The benchmark's items: the first ``limit`` of the seeded N = 1024 draw; for MMLU the
    draw's items of its first ``mmlu_subjects`` subjects, so each subject keeps the item density
    of a full run (about 18 per subject) and its few-shot preamble is shared as in that run."""
    task = TASKS.get(name)(TaskOptions(data_dir=data_dir, seed=seed))
    docs = task.docs()
    if name == "mmlu" and mmlu_subjects:
        ids = sample_indices(len(docs), 1024, seed)
        keep = sorted({docs[i]["subject"] for i in ids})[:mmlu_subjects]
        return [i for i in ids if docs[i]["subject"] in keep]
    return sample_indices(len(docs), 1024, seed, limit)


def task_requests(name: str, data_dir: str | None, ids: list[int], seed: int = 42):
    task = TASKS.get(name)(TaskOptions(data_dir=data_dir, seed=seed))
    docs = task.docs()
    return [r for i in ids for r in task.requests(docs[i])]


def input_tokens(scorer: HFScorer, reqs) -> int:
    total = 0
    for r in reqs:
        ctx, cont = scorer.tokens.encode_pair(r.context, r.continuation)
        total += len(ctx) + len(cont)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="truthfulqa_mc2,mmlu")
    ap.add_argument("--limit", type=int, default=20, help="items per task (TruthfulQA)")
    ap.add_argument("--mmlu-subjects", type=int, default=1, help="MMLU: all N=1024-draw items of this many subjects (0: --limit items)")
    ap.add_argument("--data-dir", default=os.environ.get("HEADGAME_DATA_DIR"))
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/headgame-lm-eval-throughput")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = EvalConfig(model=args.model, data_dir=args.data_dir)
    model, tok, info = load_for_eval(cfg)
    results = {}
    for name in [t for t in args.tasks.split(",") if t]:
        ids = task_items(name, args.data_dir, args.limit, args.mmlu_subjects)
        reqs = task_requests(name, args.data_dir, ids)
        warm = task_requests(name, args.data_dir, ids[:1])
        scorer = build_scorer(cfg, model, tok, info, [])
        n_tokens = input_tokens(scorer, reqs)
        scorer.loglikelihood(warm)
        scorer = build_scorer(cfg, model, tok, info, [])
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        scorer.loglikelihood(reqs)
        t_hg = time.perf_counter() - t0
        bridge_warm = build_tasks([name], data_dir=args.data_dir, work=Path(args.work) / "warm", ids={name: ids[:1]})
        run_lm_eval(model, tok, bridge_warm, batch_size=args.batch_size, max_length=scorer.cfg.max_length)
        bridge = build_tasks([name], data_dir=args.data_dir, work=Path(args.work) / "timed", ids={name: ids})
        t0 = time.perf_counter()
        le = run_lm_eval(model, tok, bridge, batch_size=args.batch_size, max_length=scorer.cfg.max_length)[name]
        t_le = time.perf_counter() - t0
        n = len(ids)
        row = {
            "items": n, "item_ids": ids, "requests": len(reqs), "input_tokens": n_tokens,
            "headgame": {"seconds": round(t_hg, 2), "items_per_s": n / t_hg, "tokens_per_s": n_tokens / t_hg,
                         "forward_tokens": scorer.stats["forward_tokens"]},
            "lm_eval": {"seconds": round(t_le, 2), "items_per_s": n / t_le, "tokens_per_s": n_tokens / t_le,
                        "batch_size": args.batch_size, "score": le["score"]},
            "ratio": t_le / t_hg, "load_average_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
        }
        results[name] = row
        print(f"{name:16s} headgame {row['headgame']['items_per_s']:.3f} items/s ({row['headgame']['tokens_per_s']:.0f} tok/s)  "
              f"lm-eval {row['lm_eval']['items_per_s']:.3f} items/s ({row['lm_eval']['tokens_per_s']:.0f} tok/s)  "
              f"ratio {row['ratio']:.2f}", flush=True)
    out = {
        "model": args.model, "dtype": "float32", "device": "cpu", "threads": args.threads,
        "machine": cpu_name(), "cpus": os.cpu_count(), "command": " ".join(sys.argv),
        "versions": package_versions(), "lm_eval_version": _version("lm-eval"), "tasks": results,
        "ratio": min(r["ratio"] for r in results.values()),
        "target_ratio": 3.0,
    }
    write_json_atomic(args.out, out)
    print(f"ratio (worst task) {out['ratio']:.2f}; wrote {args.out}")
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
