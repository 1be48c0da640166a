"""Resumable stages of ``headgame reproduce``: each stage's small result lives in
``R/<name>/stage.json`` beside the configuration that produced it, and is reused whenever that
configuration is asked for again.

A stage is a function of its configuration (a JSON-able dict). Its record holds the config, its
key (the SHA-256 of the canonical JSON), the result, the wall time and the finish time; it is
written atomically once the stage has finished, so a killed run leaves either a complete record
or none. A record whose key differs from the configuration asked for is stale: the stage runs
again (the work folder it used is cleared first) and the old record is replaced.

Heavy intermediate files (adapters, checkpoints) go under ``R/.work/<name>`` and are deleted when
the stage has finished, unless the store keeps them: only ``stage.json`` and the small files a
stage writes beside it are meant to be committed, so a run continues on another machine from
those files alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError
from headgame.io import write_json_atomic

RECORD = "stage.json"
PENDING = ".pending.json"  # a stage begun and not finished: its key, so its partial files can be trusted
FORMAT = "headgame-reproduce-stage/1"


def _read_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("key")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def stage_key(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``config`` (sorted keys, no whitespace)."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise HeadgameError(f"a stage configuration must be plain JSON (no NaN, no objects): {exc}") from None
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class StageRun:
    """What happened to one stage in this invocation."""

    name: str
    status: str  # "ran", "reused"
    seconds: float
    result: dict[str, Any]


@dataclass
class StageStore:
    """The stage records under ``root``; ``keep_work`` keeps the heavy work folders."""

    root: Path
    keep_work: bool = False
    say: Callable[[str], None] = print
    runs: list[StageRun] = field(default_factory=list)

    def folder(self, name: str) -> Path:
        """Where stage ``name`` writes its small results (``name`` may contain '/')."""
        if not name or name.startswith("/") or ".." in Path(name).parts:
            raise HeadgameError(f"stage name {name!r} is not a relative folder name; use e.g. models/ce-seed42")
        return self.root / name

    def work(self, name: str) -> Path:
        """Where stage ``name`` writes its heavy intermediate files (deleted once it finished)."""
        return self.root / ".work" / name

    def record(self, name: str) -> dict[str, Any] | None:
        path = self.folder(name) / RECORD
        if not path.exists():
            return None
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HeadgameError(f"{path} is not a readable stage record ({exc}); delete it to run the stage again") from None
        return rec if isinstance(rec, dict) and rec.get("format") == FORMAT else None

    def done(self, name: str, config: dict[str, Any]) -> dict[str, Any] | None:
        """The result of ``name`` if it finished with exactly ``config``, else None."""
        rec = self.record(name)
        if rec is None or rec.get("key") != stage_key(config):
            return None
        return rec.get("result")

    def run(self, name: str, config: dict[str, Any], fn: Callable[[Path, Path], dict[str, Any]]) -> dict[str, Any]:
        """``fn(folder, work) -> result`` unless ``name`` already finished with ``config``.

        ``folder`` takes the small files, ``work`` the heavy ones. An interrupted stage has no
        record; ``fn`` is called again and may continue from what it left in ``work``."""
        key = stage_key(config)
        cached = self.done(name, config)
        if cached is not None:
            self.runs.append(StageRun(name, "reused", 0.0, cached))
            return cached
        folder, work = self.folder(name), self.work(name)
        pending = folder / PENDING
        started = _read_key(pending)
        if self.record(name) is not None or (started is not None and started != key):
            # finished or begun with other settings: none of its files are this config's
            self.say(f"{name}: the files there were made with other settings; running it again")
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(pending, {"key": key, "config": config})  # sub-steps' files belong to this key
        t0 = time.perf_counter()
        result = fn(folder, work)
        seconds = time.perf_counter() - t0
        if not isinstance(result, dict):
            raise TypeError(f"stage {name} returned {type(result).__name__}, not a dict")
        write_json_atomic(folder / RECORD, {
            "format": FORMAT, "name": name, "key": key, "config": config, "result": result,
            "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        pending.unlink(missing_ok=True)
        if not self.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        self.runs.append(StageRun(name, "ran", seconds, result))
        return result

    def seconds(self, name: str) -> float | None:
        """Wall seconds of the finished stage ``name`` (from its record, whichever run made it)."""
        rec = self.record(name)
        return None if rec is None else rec.get("seconds")
