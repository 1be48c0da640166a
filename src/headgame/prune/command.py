"""``headgame prune``: argparse registration (loaded through ``cli.COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    from headgame.cliargs import add_config_flags, add_run_options
    from headgame.prune.config import PruneConfig
    from headgame.prune.criteria import CRITERIA

    p = sub.add_parser(
        "prune",
        help="rank heads by a criterion, remove them physically, measure perplexity, FLOPs and throughput",
        description=(
            "Score every attention head (fep = GT-FEP marginal contribution, or another criterion), prune the lowest "
            "--fraction of heads (globally, keeping one per layer, or --per-layer), remove them physically from the "
            "projections, and measure before and after: perplexity on GSM8K test and WikiText-2 (data directory), "
            "analytic and measured FLOPs, interleaved forward and generation throughput. Writes pruning.json, "
            "pruning_table.md/.csv, head_scores.csv, config.yaml and the pruned model (safetensors) in OUT/model."
        ),
    )
    add_config_flags(p, PruneConfig, extra_help={"criterion": f"One of {', '.join(CRITERIA)}."})
    add_run_options(p, resume="continue the interrupted run in DIR (default: --out) from its last checkpoint; flags not given keep the run's values")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headgame.cliargs import apply_threads, config_from_args, given
    from headgame.prune.config import PruneConfig
    from headgame.prune.run import run_prune
    from headgame.prune.state import STATE_FILE
    from headgame.runs import resume_config

    apply_threads(args)
    if args.resume is not None:
        flags = given(args, PruneConfig)
        cfg = resume_config(PruneConfig, args.resume or flags.get("out", PruneConfig.out), STATE_FILE, flags)
    else:
        cfg = config_from_args(args, PruneConfig)
    result = run_prune(cfg, resume=args.resume is not None, progress=not args.no_progress, console=Console(stderr=True))
    print_table(result, Console())
    out = os.path.abspath(cfg.out)
    print(f"wrote {os.path.join(out, 'pruning.json')} and {os.path.join(out, 'pruning_table.md')}"
          + (f"; pruned model in {result['saved_model']}" if result.get("saved_model") else ""))
    return 0


def print_table(result: dict, console) -> None:
    from rich import box
    from rich.table import Table

    from headgame.prune.report import compact

    header, rows = compact(result)
    t = Table(title=f"headgame prune · {result['model']['spec']} · {100 * result['budget']['fraction']:.0f}% of heads",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, caption="speed-up: measured / FLOP-implied (forward); ppl with its change")
    for h in header:
        t.add_column(h, justify="right" if h != "model" else "left", no_wrap=True)
    for r in rows:
        t.add_row(*r)
    console.print(t)
    if "random" in result.get("results", {}):
        console.print("random: the mean over its seeds (sd in pruning_table.md, with every other column: tokens/s, generation, KV heads, ε)",
                      highlight=False)
    for key, text in result.get("notes", {}).items():
        if key.startswith("perplexity_"):
            console.print(f"note: {key}: {text}", highlight=False)
