"""Whole-suite throughput of ``headgame eval`` against lm-evaluation-harness, same model, same items.

All twelve tasks (``--tasks``, default every registered one) on the first ``--limit`` items of
each task's seeded N = 1024 draw (WikiText ``--wikitext-limit`` documents, each thousands of
tokens). headgame's side runs as ``headgame eval`` does: :func:`headgame.evaluate.runner.run_tasks`
over all tasks with one scorer (identical requests of different tasks scored once, one model
call per request kind). lm-eval 0.4.13's side is one ``simple_evaluate`` over every task config
(its built-in YAMLs, and headgame's ``--export-lm-eval`` configs for HaluEval, MemoTrap, PopQA and
GSM8K perplexity; :mod:`headgame.evaluate.lm_eval_bridge`) with ``HFLM`` at ``--batch-size``,
offline on local files. One warm-up item of two tasks per side first.

Reported: per-task rows (items, requests, input tokens, both scores; ``--per-task`` also times
each task alone on both sides) and ``ratio`` = lm-eval total seconds ÷ headgame total seconds
(``target_ratio`` 5). ``--no-lm-eval`` times headgame alone; ``--device`` picks its device (and
lm-eval's). The machine's load average is recorded since shared machines are noisy.

    python benchmarks/eval_throughput.py --model smollm2-135m --limit 10 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from headgame.evaluate.config import EvalConfig  # noqa: E402
from headgame.evaluate.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest  # noqa: E402
from headgame.evaluate.runner import build_scorer, load_for_eval, run_tasks  # noqa: E402
from headgame.evaluate.tasks import TASKS, TaskOptions, sample_indices  # noqa: E402
from headgame.io import write_json_atomic  # noqa: E402
from headgame.system import cpu_name, matmul_peak, package_versions, peak_fraction  # noqa: E402

WARMUP = ("truthfulqa_mc1", "nq_open")


def suite_items(names: list[str], data_dir: str | None, limit: int, wikitext_limit: int, seed: int = 42) -> dict:
    """Per task: (item ids, Task, its docs), the first items of the seeded N = 1024 draw."""
    out = {}
    for name in names:
        task = TASKS.get(name)(TaskOptions(data_dir=data_dir, seed=seed))
        docs = task.docs()
        out[name] = (sample_indices(len(docs), 1024, seed, wikitext_limit if name == "wikitext" else limit), task, docs)
    return out


def input_tokens(scorer, reqs) -> int:
    """Σ over requests of the tokens the model reads (context + continuation, or the whole text)."""
    total = 0
    for r in reqs:
        if isinstance(r, LoglikelihoodRequest):
            ctx, cont = scorer.tokens.encode_pair(r.context, r.continuation)
            total += len(ctx) + len(cont)
        elif isinstance(r, RollingRequest):
            total += len(scorer.tokens.encode(r.text)) + 1
        elif isinstance(r, GenerateRequest):
            total += len(scorer.tokens.encode(r.context))
    return total


def time_headgame(cfg: EvalConfig, scorer, ids: dict[str, list[int]]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    body = run_tasks(cfg, scorer, say=lambda m: None, ids=ids)
    return time.perf_counter() - t0, body


def time_lm_eval(model, tok, names, ids, args, max_length: int, work: Path) -> tuple[float, dict]:
    from headgame.evaluate.lm_eval_bridge import build_tasks, run_lm_eval

    bridge = build_tasks(names, data_dir=args.data_dir, work=work, ids=ids)
    t0 = time.perf_counter()
    res = run_lm_eval(model, tok, bridge, batch_size=args.batch_size, max_length=max_length, device=args.device)
    return time.perf_counter() - t0, res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="all", help="comma-separated tasks, or all (the twelve)")
    ap.add_argument("--limit", type=int, default=10, help="items per task")
    ap.add_argument("--wikitext-limit", type=int, default=2, help="WikiText documents (each thousands of tokens)")
    ap.add_argument("--data-dir", default=os.environ.get("HEADGAME_DATA_DIR"))
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both sides)")
    ap.add_argument("--no-lm-eval", action="store_true", help="time headgame's side only")
    ap.add_argument("--per-task", action="store_true", help="also time every task alone on both sides")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/headgame-lm-eval-throughput")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = EvalConfig(model=args.model, tasks=args.tasks, data_dir=args.data_dir, device=args.device)
    names = cfg.task_names()
    model, tok, info = load_for_eval(cfg)
    items = suite_items(names, args.data_dir, args.limit, args.wikitext_limit)
    ids = {n: v[0] for n, v in items.items()}
    scorer = build_scorer(cfg, model, tok, info, [])
    reqs = {n: [r for i in v[0] for r in v[1].requests(v[2][i])] for n, v in items.items()}
    warm = [n for n in WARMUP if n in names] or names[:1]
    warm_cfg = EvalConfig(model=args.model, tasks=",".join(warm), data_dir=args.data_dir, device=args.device)
    warm_ids = {n: ids[n][:1] for n in warm}
    time_headgame(warm_cfg, build_scorer(cfg, model, tok, info, []), warm_ids)
    load0 = os.getloadavg()[0]
    t_hg, body = time_headgame(cfg, scorer, ids)
    forward_tokens = scorer.stats.get("forward_tokens")
    t_le, le = None, {}
    if not args.no_lm_eval:
        time_lm_eval(model, tok, warm, warm_ids, args, scorer.cfg.max_length, Path(args.work) / "warm")
        t_le, le = time_lm_eval(model, tok, names, ids, args, scorer.cfg.max_length, Path(args.work) / "timed")
    rows = {}
    for name in names:
        hg = body["tasks"][name]
        rows[name] = {"items": len(ids[name]), "item_ids": ids[name], "requests": len(reqs[name]),
                      "input_tokens": input_tokens(scorer, reqs[name]), "metric": hg["metric"],
                      "headgame_score": hg["score"], "lm_eval_score": le[name]["score"] if name in le else None}
        if args.per_task:
            one = EvalConfig(model=args.model, tasks=name, data_dir=args.data_dir, device=args.device)
            t1, _ = time_headgame(one, build_scorer(cfg, model, tok, info, []), {name: ids[name]})
            rows[name]["headgame_seconds_alone"] = round(t1, 2)
            if not args.no_lm_eval:
                t2, _ = time_lm_eval(model, tok, [name], {name: ids[name]}, args, scorer.cfg.max_length, Path(args.work) / "one")
                rows[name]["lm_eval_seconds_alone"] = round(t2, 2)
                rows[name]["ratio_alone"] = t2 / t1
        print(f"{name:24s} {rows[name]['items']:3d} items {rows[name]['requests']:5d} requests  "
              f"headgame {hg['score']:.4f}  lm-eval {rows[name]['lm_eval_score'] if rows[name]['lm_eval_score'] is not None else '—'}", flush=True)
    n_items = sum(r["items"] for r in rows.values())
    # the share of the machine's peak, a lower bound: the decoder's matmuls (2 FLOPs per weight of
    # every linear layer but the LM head) for each token headgame forwarded, over the measured
    # peak of a large matmul; attention scores and the LM head are not counted
    head = model.get_output_embeddings()
    per_token = 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    dev = torch.device(args.device)
    peak = matmul_peak(args.device, "float32", args.threads if dev.type == "cpu" else None)
    out = {
        "model": args.model, "dtype": "float32", "device": args.device, "threads": args.threads,
        "machine": cpu_name(), "cpus": os.cpu_count(), "command": " ".join(sys.argv),
        "versions": package_versions(), "lm_eval_version": None if args.no_lm_eval else _version("lm-eval"),
        "limit": args.limit, "wikitext_limit": args.wikitext_limit, "tasks": rows,
        "headgame": {"seconds": round(t_hg, 2), "items_per_s": n_items / t_hg, "timing_by_kind": body["timing"],
                     "forward_tokens": forward_tokens,
                     "peak": {**peak_fraction(per_token * forward_tokens, t_hg, peak),
                              "counted": "2 x decoder linear weights per forwarded token (no attention scores, no LM head): a lower bound"}},
        "lm_eval": None if t_le is None else {"seconds": round(t_le, 2), "items_per_s": n_items / t_le, "batch_size": args.batch_size},
        "ratio": None if t_le is None else t_le / t_hg, "target_ratio": 5.0,
        "load_average_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    write_json_atomic(args.out, out)
    tail = f"lm-eval {t_le:.1f} s, ratio {out['ratio']:.2f}" if t_le is not None else "lm-eval not run"
    print(f"whole suite ({n_items} items): headgame {t_hg:.1f} s, {tail}; wrote {args.out}")
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
