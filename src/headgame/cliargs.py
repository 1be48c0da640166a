"""Command-line flags generated from a command's config dataclass: one source of truth.

Every field of a config becomes the flag ``--field-name`` (a ``bool`` field that defaults to
True becomes ``--no-field-name``); its help is the field's docstring followed by the default.
Flags that are not given stay out of the parsed namespace (``argparse.SUPPRESS``), so the
dataclass's own defaults and ``__post_init__`` validation apply, exactly as for the Python API.

A few options are not settings of the result and so not config fields: ``--resume``,
``--threads``, ``--no-progress`` and ``--debug`` (:func:`add_run_options`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any

from headgame.errors import HeadgameError

# annotation (as written, `from __future__ import annotations`) -> argparse type
_TYPES = {"int": int, "int | None": int, "float": float, "float | None": float, "str": str, "str | None": str,
          "list[int] | None": str}


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (PEP 257 attribute docstrings)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def flag_name(name: str, default: Any = None) -> str:
    """``--field-name``, or ``--no-field-name`` for a switch that is on by default."""
    base = name.replace("_", "-")
    return f"--no-{base}" if default is True else f"--{base}"


def add_config_flags(p: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ("extra",),
                     aliases: dict[str, tuple[str, ...]] | None = None, extra_help: dict[str, str] | None = None) -> None:
    """Add one flag per field of the config dataclass ``cls`` to ``p``.

    ``aliases`` adds further spellings of a flag; ``extra_help`` appends text known only at run
    time (e.g. the names in a registry) to a field's docstring.
    """
    docs = field_docs(cls)
    aliases = aliases or {}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        names = [flag_name(f.name, default), *aliases.get(f.name, ())]
        doc = docs.get(f.name)
        if doc and extra_help and f.name in extra_help:
            doc = f"{doc} {extra_help[f.name]}"
        if not doc:
            raise TypeError(f"{cls.__name__}.{f.name} has no docstring; every config field needs one (it is the --help text)")
        doc = doc.replace("%", "%%")
        if str(f.type) == "bool":
            action = "store_false" if default is True else "store_true"
            p.add_argument(*names, dest=f.name, action=action, default=argparse.SUPPRESS, help=doc)
            continue
        kind = _TYPES.get(str(f.type))
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line type for annotation {f.type!r}")
        shown = "none" if default is None else (",".join(map(str, default)) if isinstance(default, list) else default)
        p.add_argument(*names, dest=f.name, type=kind, default=argparse.SUPPRESS, metavar={int: "N", float: "X"}.get(kind, f.name.split("_")[-1].upper()),
                       help=f"{doc} (default {str(shown).replace('%', '%%')})")


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The config fields present on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace, cls: type, **overrides: Any):
    """Build the config from the flags given (dataclass defaults for the rest)."""
    return cls(**{**given(args, cls), **overrides})


def add_run_options(p: argparse.ArgumentParser, *, resume: str | None = None) -> None:
    """``--threads``, ``--no-progress`` and ``--debug`` (all commands), and ``--resume [DIR]``
    where the command can continue an interrupted run (``resume`` is its help text)."""
    if resume is not None:
        p.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR", help=resume)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often fastest on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count from ``--threads`` (validated)."""
    n = getattr(args, "threads", None)
    if n is None:
        return
    if isinstance(n, bool) or n <= 0:
        raise HeadgameError(f"--threads must be a positive integer, got {n}; pass e.g. --threads 1")
    import torch

    torch.set_num_threads(n)
