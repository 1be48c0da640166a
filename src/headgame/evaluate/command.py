"""The ``headgame eval`` subcommand (registered by ``headgame.cli.COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from headgame.cliargs import add_config_flags, add_run_options, apply_threads, config_from_args
from headgame.errors import HeadgameError
from headgame.evaluate.config import EvalConfig

USAGE = """examples:
  headgame eval --model smollm2-135m --tasks all --limit 50 --out E
  headgame eval --model smollm2-135m --adapter runs/lora --merge-adapter --tasks truthfulqa_mc2,mmlu --out E2
  headgame eval --model smollm2-135m --decoding cad --tasks halueval_qa,memotrap --out E3
  headgame eval --compare E/eval.json E2/eval.json --out cmp
  headgame eval --tasks all --limit 50 --export-lm-eval lm-eval-tasks
"""


def register(sub: argparse._SubParsersAction) -> None:
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
    add_config_flags(p, EvalConfig)
    p.add_argument("--list-tasks", action="store_true", help="list the registered tasks and exit")
    p.add_argument("--compare", nargs=2, metavar=("BASE", "METHOD"), help="compare two eval.json files instead of evaluating (output: --out, default the METHOD file's folder)")
    add_run_options(p)
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

    apply_threads(args)
    cfg = config_from_args(args, EvalConfig)
    if cfg.export_lm_eval:
        return run_export(cfg)
    DECODING.get(cfg.decoding)  # unknown method: error with the valid ones
    from rich.console import Console

    from headgame.evaluate.runner import run_eval

    from headgame.dist import is_main

    err = Console(stderr=True)
    main = is_main()  # of several processes, rank 0 alone reports
    say = (lambda msg: err.print(msg, markup=False, highlight=False)) if main else (lambda msg: None)  # noqa: E731
    if args.no_progress or not main or not sys.stderr.isatty() and os.environ.get("HEADGAME_PROGRESS") != "1":
        result = run_eval(cfg, say=say)
    else:
        result = _with_progress(cfg, err, say)
    if not main:
        return 0
    print_scores(result)
    print(f"wrote {os.path.join(os.path.abspath(cfg.out), 'eval.json')}")
    return 0


def run_export(cfg: EvalConfig) -> int:
    """--export-lm-eval DIR: write the lm-eval task configs and items, score nothing."""
    from headgame.evaluate.lm_eval_export import export_from_config

    done = export_from_config(cfg, say=lambda msg: print(msg, file=sys.stderr))
    for e in done:
        print(f"{e.task:28s} {len(e.ids):5d} items  {e.yaml}")
    out = Path(cfg.export_lm_eval)
    print(f"wrote {out.resolve() / 'README.md'}; run: lm_eval --model hf --model_args pretrained=MODEL --include_path {out.resolve()} --tasks headgame")
    return 0


def _with_progress(cfg: EvalConfig, console, say) -> dict:
    from headgame.evaluate.runner import run_eval
    from headgame.runs import progress_bar

    with progress_bar(True, console, fields="{task.fields[live]}") as bar:
        def make(kind: str, total: int):
            tid = bar.add_task(f"{kind} requests", total=total, live="")
            return lambda done, live="": bar.update(tid, completed=done, live=live)

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


COMPARE_ARTEFACTS = ("compare.md", "compare.html", "compare.json", "config.yaml", "compare_config.yaml")
"""What ``eval --compare`` writes into --out (its own folder, or beside the METHOD eval run)."""


def run_compare(args: argparse.Namespace) -> int:
    from headgame.evaluate.compare import compare, load_eval, to_markdown, write_outputs
    from headgame.outdir import RunFolder

    base, method = (load_eval(p) for p in args.compare)
    result = compare(base, method)
    if not result["rows"]:
        raise HeadgameError(f"{args.compare[0]} and {args.compare[1]} share no task; compare runs of the same tasks")
    print(to_markdown(result), end="")
    out = Path(args.out) if getattr(args, "out", None) else Path(args.compare[1]).parent
    with RunFolder(out, command="eval --compare", artefacts=COMPARE_ARTEFACTS, accepts=("eval",)):
        write_outputs(result, out, (args.compare[0], args.compare[1]))
    print(f"wrote {out / 'compare.md'} and {out / 'compare.html'}")
    return 0
