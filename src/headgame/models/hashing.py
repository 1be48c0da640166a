"""Content hashes of model files, memoised by (path, size, mtime) so reloads stay fast."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 22


def cache_root() -> Path:
    """Where de-quantised models and the hash memo live: $HEADGAME_CACHE, else the XDG cache."""
    env = os.environ.get("HEADGAME_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "headgame"


def _memo_path() -> Path:
    return cache_root() / "hashes.json"


def _read_memo() -> dict[str, str]:
    try:
        return json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex). Re-uses the cached digest while size and mtime match."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo = _read_memo()
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    # keep the memo small: forget entries whose file is gone (e.g. temporary test folders)
    memo = {k: v for k, v in memo.items() if Path(k.split("|", 1)[0]).exists()}
    memo[key] = digest
    try:
        from headgame.io import write_json_atomic

        write_json_atomic(_memo_path(), memo)
    except OSError:
        pass  # an unwritable cache only costs re-hashing next time
    return digest


def files_sha256(paths: list[Path]) -> str:
    """One digest over several files (e.g. sharded safetensors), order-independent of listing."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def tensors_sha256(model: Any) -> str:
    """Digest of a module's parameters and buffers (for in-memory models such as tiny ones)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
