"""Atomic file output: write to a temporary name beside the target, then rename.

Ctrl-C or a crash therefore never leaves a half-written artefact behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    try:  # torch tensors, without importing torch here
        return obj.tolist()
    except AttributeError:
        raise TypeError(f"cannot serialise {type(obj).__name__} to JSON") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (same-directory temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Serialise ``obj`` (numpy arrays and tensors allowed) and write it atomically."""
    text = json.dumps(obj, indent=indent, default=_json_default, allow_nan=True)
    return write_text_atomic(path, text + "\n")


def read_result_json(path: str | os.PathLike, *, key: str, kind: type, file: str, command: str, holds: str) -> dict[str, Any]:
    """Read a result JSON a headgame command wrote, with one-line errors for a missing, invalid or
    empty file: it must be an object whose ``key`` is a non-empty ``kind``."""
    from headgame.errors import HeadgameError

    path = Path(path)
    fix = f"pass the {file} written by headgame {command}"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HeadgameError(f"{path} not found; {fix}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HeadgameError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), kind) or not data[key]:
        raise HeadgameError(f"{path} holds no {holds}; {fix}")
    return data


def read_analysis(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ``analysis.json`` of headgame analyze, with one-line errors for bad files."""
    return read_result_json(path, key="layers", kind=list, file="analysis.json", command="analyze", holds="per-layer results")


class AtomicDir:
    """Context manager giving a temporary sibling folder that is renamed to ``path`` on success.

    On an exception (or Ctrl-C) the temporary folder is deleted and ``path`` is untouched.
    An existing ``path`` is replaced only after the new content is complete.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
        return False
