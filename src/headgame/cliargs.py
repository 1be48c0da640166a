"""Command-line options that analyze, fep and prune share, defined once."""

from __future__ import annotations

import argparse
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


def add_model_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--model", default=default, help=f"packaged name, .gguf file, model folder or hub id (default {default})")


def add_text_args(p: argparse.ArgumentParser, default_field: str) -> None:
    """--text-field and --data-dir, for commands that read text sources."""
    p.add_argument("--text-field", default=default_field, help=f"JSON/JSONL field holding the text (default {default_field})")
    p.add_argument("--data-dir", default=None, help="folder of the public data files (default $HEADGAME_DATA_DIR)")


def add_run_args(p: argparse.ArgumentParser, d: Any, *, seed_help: str) -> None:
    """--out, --seed, --dtype, --trust-remote-code and --no-progress, defaults from config ``d``."""
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"{seed_help} (default {d.seed})")
    p.add_argument("--dtype", default=d.dtype, choices=list(DTYPES), help=f"model dtype (default {d.dtype})")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom modelling code from a hub repository")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
