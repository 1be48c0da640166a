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
    if path.is_dir():
        if not (path / file).is_file():
            raise HeadgameError(f"{path} is a folder without {file}; {fix}")
        path = path / file
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HeadgameError(f"{path} not found; {fix}") from None
    except OSError as exc:
        raise HeadgameError(f"{path} cannot be read ({exc.strerror or exc}); {fix}") from None
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


# --- run state: safetensors + JSON, never pickle ----------------------------------------------
#
# A resumable run's state (accumulators, optimizer moments, RNG states, counters) is a nest of
# dicts, lists, numbers, strings and tensors. It is stored as ONE safetensors file: the tensors
# as its tensors, everything else as JSON in its metadata, tensors replaced by {"__tensor__": key}.
# Loading it runs no code, unlike unpickling a torch.save file, so a crafted run
# folder cannot execute anything on --resume.

_TENSOR, _ITEMS, _TUPLE = "__tensor__", "__items__", "__tuple__"


def _encode_state(obj: Any, tensors: dict[str, Any]) -> Any:
    import torch

    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode_state(v, tensors) for k, v in obj.items()}
        return {_ITEMS: [[k, _encode_state(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode_state(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode_state(v, tensors) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"run state cannot hold a {type(obj).__name__}")


def _decode_state(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_ITEMS}:
            return {(tuple(k) if isinstance(k, list) else k): _decode_state(v, tensors) for k, v in obj[_ITEMS]}
        if set(obj) == {_TUPLE}:
            return tuple(_decode_state(v, tensors) for v in obj[_TUPLE])
        return {k: _decode_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_state(v, tensors) for v in obj]
    return obj


def save_state(path: str | os.PathLike, state: Any) -> Path:
    """Write a run state (nested containers of tensors and plain values) atomically as safetensors."""
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    meta = json.dumps(_encode_state(state, tensors), allow_nan=True)
    seen: set[int] = set()
    for key, t in tensors.items():  # one array held twice: safetensors stores each tensor's own bytes
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            tensors[key] = t.clone()
        seen.add(ptr)
    return write_bytes_atomic(path, save(tensors, metadata={"headgame_state": meta}))


def load_state(path: str | os.PathLike) -> Any:
    """Read a state written by :func:`save_state`; a file in any other format is refused."""
    from safetensors import SafetensorError, safe_open

    from headgame.errors import HeadgameError

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as fh:
            meta = (fh.metadata() or {}).get("headgame_state")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise HeadgameError(f"{path} is not a headgame run state ({str(exc).splitlines()[0][:120]}); "
                            "start the run over without --resume") from None
    if meta is None:
        raise HeadgameError(f"{path} is not a headgame run state (no state metadata); start the run over without --resume")
    try:
        return _decode_state(json.loads(meta), tensors)
    except (ValueError, KeyError, TypeError) as exc:  # damaged or hand-made metadata
        raise HeadgameError(f"{path} holds a damaged run state ({type(exc).__name__}: {str(exc)[:80]}); "
                            "start the run over without --resume") from None
