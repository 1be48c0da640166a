"""The ``headgame eval`` subcommand (registered by ``headgame.cli.COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from headgame.errors import HeadgameError
from headgame.evaluate.config import EvalConfig

USAGE = """examples:
  headgame eval --model smollm2-135m --tasks all --limit 50 --out E
  headgame eval --model smollm2-135m --adapter runs/lora --merge --tasks truthfulqa_mc2,mmlu --out E2
  headgame eval --model smollm2-135m --decoding cad --tasks halueval_qa,memotrap --out E3
  headgame eval --compare E/eval.json E2/eval.json --out cmp
"""


def register(sub: argparse._SubParsersAction) -> None:
    d = EvalConfig()
    p = sub.add_parser(
        "eval",
        help="score a model (with an optional adapter or decoding baseline) on the paper's benchmarks",
        description=(
            "Evaluate hallucination and knowledge benchmarks (HaluEval dialogue/QA/summarisation, MemoTrap, "
            "TruthfulQA MC1/MC2, MMLU, NQ-open, PopQA, WikiText-2, Winogrande; GSM8K perplexity) with "
            "N = 1024 items per task drawn with seed 42, and write eval.json with per-item outcomes. "
            "With --compare, print the paper's table of two eval.json files with Δ%, Halluc Δ, "
            "Knowledge Δ and significance marks."
        ),
        epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=d.model, help=f"packaged name, .gguf file, model folder (also pruned), hub id or tiny-* (default {d.model})")
    p.add_argument("--adapter", default=None, help="peft adapter folder to apply (unmerged unless --merge)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the weights before evaluating")
    p.add_argument("--tasks", default=d.tasks, help="comma-separated task names or 'all' (see --list-tasks)")
    p.add_argument("--list-tasks", action="store_true", help="list the registered tasks and exit")
    p.add_argument("--limit", type=int, default=None, help="at most this many items per task (default: N)")
    p.add_argument("--n-items", type=int, default=d.n_items, help=f"items per task drawn with the seed (default {d.n_items})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"item-draw seed (default {d.seed})")
    p.add_argument("--data-dir", default=None, help="folder of the public benchmark files (default $HEADGAME_DATA_DIR)")
    p.add_argument("--decoding", default=d.decoding, help="greedy (default), cad, dola or actdec")
    p.add_argument("--cad-alpha", type=float, default=d.cad_alpha, help=f"CAD contrast weight (default {d.cad_alpha})")
    p.add_argument("--dola-layers", default=d.dola_layers, help="DoLa candidate layers: low (default), high or e.g. 2,4,6")
    p.add_argument("--relative-top", type=float, default=d.relative_top, help=f"DoLa/ActDec plausibility threshold (default {d.relative_top})")
    p.add_argument("--actdec-alpha", type=float, default=d.actdec_alpha, help=f"ActDec entropy weight (default {d.actdec_alpha})")
    p.add_argument("--actdec-layer", type=int, default=None, help="ActDec info layer (default round(0.8125 x layers))")
    p.add_argument("--mmlu-shots", type=int, default=d.mmlu_shots, help=f"MMLU few-shot examples, 0-5 (default {d.mmlu_shots})")
    p.add_argument("--truthfulqa-version", default=d.truthfulqa_version, choices=["v0", "v1", "2025"], help="TruthfulQA files (default v0)")
    p.add_argument("--max-length", type=int, default=None, help="longest input in tokens (default: model maximum, at most 2048)")
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens, help=f"token budget of a scoring batch (default {d.batch_tokens})")
    p.add_argument("--gen-batch", type=int, default=d.gen_batch, help=f"prompts generated together (default {d.gen_batch})")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget of every generation task (default: per task)")
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the model's chat template (default: plain prompts)")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--out", default=None, help=f"output folder (default {d.out}; with --compare: the METHOD file's folder)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; 1 is often fastest on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--compare", nargs=2, metavar=("BASE", "METHOD"), help="compare two eval.json files instead of evaluating")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_tasks:
        from headgame.evaluate.tasks import TASKS

        for name in TASKS:
            t = TASKS.get(name)
            print(f"{name:24s} {t.group:9s} {t.description}")
        return 0
    if args.compare:
        return run_compare(args)
    from headgame.evaluate.decoding import DECODING

    if args.threads is not None:
        if args.threads <= 0:
            raise HeadgameError(f"--threads must be a positive integer, got {args.threads}; pass e.g. --threads 1")
        import torch

        torch.set_num_threads(args.threads)
    DECODING.get(args.decoding)  # unknown method: error with the valid ones
    cfg = EvalConfig(
        model=args.model, adapter=args.adapter, merge=args.merge, tasks=args.tasks, limit=args.limit,
        n_items=args.n_items, seed=args.seed, data_dir=args.data_dir, decoding=args.decoding,
        cad_alpha=args.cad_alpha, dola_layers=args.dola_layers, relative_top=args.relative_top,
        actdec_alpha=args.actdec_alpha, actdec_layer=args.actdec_layer, mmlu_shots=args.mmlu_shots,
        truthfulqa_version=args.truthfulqa_version, max_length=args.max_length, batch_tokens=args.batch_tokens,
        gen_batch=args.gen_batch, max_new_tokens=args.max_new_tokens, chat_template=args.chat_template,
        dtype=args.dtype, out=args.out or EvalConfig.out,
    )
    from rich.console import Console

    from headgame.evaluate.runner import run_eval

    err = Console(stderr=True)
    say = lambda msg: err.print(msg, markup=False, highlight=False)  # noqa: E731
    if args.no_progress or not sys.stderr.isatty() and os.environ.get("HEADGAME_PROGRESS") != "1":
        result = run_eval(cfg, say=say)
    else:
        result = _with_progress(cfg, err, say)
    print_scores(result)
    print(f"wrote {os.path.join(os.path.abspath(cfg.out), 'eval.json')}")
    return 0


def _with_progress(cfg: EvalConfig, console, say) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from headgame.evaluate.runner import run_eval

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        def make(kind: str, total: int):
            tid = bar.add_task(f"{kind} requests", total=total)
            return lambda done: bar.update(tid, completed=done)

        return run_eval(cfg, say=say, progress=make)


def print_scores(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"headgame eval: {result['model'].get('spec')} ({result['decoding'].get('name')})")
    for col in ("task", "metric", "score", "± stderr", "n"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for name, t in result["tasks"].items():
        arrow = "" if t.get("higher_is_better", True) else " ↓"
        se = t.get("stderr")
        table.add_row(name, t["metric"] + arrow, f"{t['score']:.4f}", f"{se:.4f}" if se is not None and math.isfinite(se) else "—", str(t["n"]))
    Console().print(table)


def run_compare(args: argparse.Namespace) -> int:
    from headgame.evaluate.compare import compare, load_eval, to_html, to_json, to_markdown
    from headgame.io import write_json_atomic, write_text_atomic

    base, method = (load_eval(p) for p in args.compare)
    result = compare(base, method)
    if not result["rows"]:
        raise HeadgameError(f"{args.compare[0]} and {args.compare[1]} share no task; compare runs of the same tasks")
    md = to_markdown(result)
    print(md, end="")
    out = Path(args.out) if args.out else Path(args.compare[1]).parent
    write_text_atomic(out / "compare.md", md)
    write_text_atomic(out / "compare.html", to_html(result))
    write_json_atomic(out / "compare.json", to_json(result))
    print(f"wrote {out / 'compare.md'} and {out / 'compare.html'}")
    return 0
