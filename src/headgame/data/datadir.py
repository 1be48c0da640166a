"""The data directory: the one place that decides where the public data files live.

Every command that reads public files (Gutenberg books, GSM8K, WikiText-2, the benchmark files
of ``headgame eval``) takes ``--data-dir DIR``; without it, ``$HEADGAME_DATA_DIR`` names the
folder. :func:`resolve_data_dir` is the only function that reads either, so the precedence and
the error messages are the same everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, overload

from headgame.errors import HeadgameError

DATA_DIR_ENV = "HEADGAME_DATA_DIR"
"""Environment variable naming the data directory when ``--data-dir`` is not given."""

PathLike = str | os.PathLike[str]


@overload
def resolve_data_dir(data_dir: PathLike | None = ..., *, required: Literal[True] = ...) -> Path: ...
@overload
def resolve_data_dir(data_dir: PathLike | None = ..., *, required: bool) -> Path | None: ...


def resolve_data_dir(data_dir: PathLike | None = None, *, required: bool = True) -> Path | None:
    """The data directory: ``data_dir`` if given (and not empty), else ``$HEADGAME_DATA_DIR``.

    With ``required=False`` a missing setting gives None, for callers that have other places to
    look (the offline packages and the hub of :func:`headgame.data.benchmarks.locate`).

    Raises:
        HeadgameError: neither is set (when ``required``), or the folder named does not exist.
    """
    value = os.fspath(data_dir) if data_dir else os.environ.get(DATA_DIR_ENV, "")
    if not value:
        if not required:
            return None
        raise HeadgameError(f"no data directory is set; pass --data-dir DIR or set {DATA_DIR_ENV}")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise HeadgameError(
            f"data directory {path} does not exist; pass --data-dir with an existing folder or set {DATA_DIR_ENV}"
        )
    return path


def data_file(rel: str, data_dir: PathLike | None, flag: str = "--data-dir") -> Path:
    """``DATA_DIR/rel``, with a one-line error naming the fix when it is missing."""
    root = resolve_data_dir(data_dir)
    path = root / rel
    if not path.is_file():
        raise HeadgameError(f"{rel} is not in the data directory {root}; pass {flag} pointing at the shared data folder")
    return path
