"""``headgame analyze``: argparse registration (loaded through ``cli.COMMAND_MODULES``).

The flags are generated from :class:`AnalyzeConfig` (``headgame.cliargs``).
"""

from __future__ import annotations

import argparse
import os

from headgame.analyze.config import AnalyzeConfig
from headgame.cliargs import add_config_flags, add_run_options, apply_threads, config_from_args

USAGE = """examples:
  headgame analyze --model smollm2-135m --data default --max-tokens 8192 --out demo-out
  headgame analyze --model smollm2-135m --adapter A/adapter --merge-adapter --out after
  headgame analyze --compare before/analysis.json after/analysis.json --out cmp
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="measure the head interaction matrix G, Γ, coalitions and redundancy of every layer",
        description=(
            "Measure how attention heads couple: weight coupling ω, gradient coupling ρ, "
            "G = ω ⊙ ρ and Γ(G) = ‖G − I‖_F per layer, coalitions (spectral biclustering + "
            "Mann–Whitney) and redundancy (z-scored head cross-correlations). Writes "
            "analysis.json, config.yaml, PNG heatmaps and a self-contained report.html."
        ),
        epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(p, AnalyzeConfig)
    p.add_argument("--compare", nargs=2, metavar=("BEFORE.json", "AFTER.json"), default=None,
                   help="compare two analyses instead: ΔG, ΔΓ and the selective-coordination test; writes compare.json/.html to --out")
    add_run_options(p, resume="continue the interrupted run in DIR (default: --out) from its last checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headgame.analyze.run import run_analysis
    from headgame.report import print_summary

    if args.compare:
        from headgame.analyze.compare import print_compare, run_compare

        out = getattr(args, "out", AnalyzeConfig.out)
        result = run_compare(args.compare[0], args.compare[1], out)
        print_compare(result)
        print(f"wrote {os.path.join(os.path.abspath(out), 'compare.html')}")
        return 0
    apply_threads(args)
    overrides = {"out": args.resume} if args.resume else {}
    cfg = config_from_args(args, AnalyzeConfig, **overrides)
    console = Console(stderr=True)
    analysis = run_analysis(cfg, resume=args.resume is not None, progress=not args.no_progress, console=console)
    from headgame.dist import is_main

    if not is_main():  # rank 0 of several processes reports
        return 0
    print_summary(analysis, console=Console())
    out = os.path.abspath(cfg.out)
    print(f"wrote {os.path.join(out, 'analysis.json')} and {os.path.join(out, 'report.html')}")
    return 0
