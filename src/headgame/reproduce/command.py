"""``headgame reproduce``: argparse registration (loaded through ``cli.COMMAND_MODULES``).

The flags are generated from :class:`ReproduceConfig` (``headgame.cliargs``); the paper is the
positional argument.
"""

from __future__ import annotations

import argparse
import os

from headgame.cliargs import add_config_flags, add_run_options, apply_threads, config_from_args
from headgame.reproduce.config import ReproduceConfig

USAGE = """examples:
  headgame reproduce game-lora --model smollm2-135m --preset cpu --out R
  headgame reproduce game-lora --preset tiny --out T                 # a tiny random model, about a minute
  headgame reproduce game-lora --preset cpu --stages main,report --out R   # some stages only
  headgame reproduce gt-fep --preset cpu --out U
Rerun the same command to continue an interrupted run: finished stages are reused, never recomputed.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="reproduce a paper (game-lora or gt-fep) as resumable stages and write its report",
        description=(
            "Run one paper's experiments end to end: for game-lora, LoRA-CE and GAME-LoRA over seeds, the ablations, "
            "the eleven benchmarks on the same items and the design layer's analysis, then Table 1 beside the paper's, "
            "the Γ regression, selective coordination, the PoA bound with measured constants and the cost; for gt-fep, "
            "the dividends, pruning curves and healing of every packaged model. Each stage's small JSON results are kept "
            "in OUT and reused on a rerun; report.md, report.html and report.json cite them."
        ),
        epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paper", choices=("game-lora", "gt-fep"), help="the paper to reproduce: game-lora or gt-fep")
    add_config_flags(p, ReproduceConfig, skip=("extra", "paper"))
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headgame.reproduce.run import run_reproduce

    apply_threads(args)
    cfg = config_from_args(args, ReproduceConfig, paper=args.paper)
    run_reproduce(cfg, progress=not args.no_progress, console=Console(stderr=True))
    if "report" in cfg.stage_list():  # --stages without report writes none
        print(f"wrote {os.path.join(os.path.abspath(cfg.out), 'report.html')} (and report.md, report.json)")
    return 0
