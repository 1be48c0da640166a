"""The run scaffold every command shares: output-folder check, provenance header, progress bar
and the identity check behind ``--resume``.

A command's runner calls these in the same order: it claims ``--out`` before any model is
loaded (:class:`headgame.outdir.RunFolder`: writable, locked, owned by one command; it calls
:func:`~headgame.outdir.check_writable`), :func:`progress_bar` around its loop, :func:`check_identity` when resuming, and
:func:`provenance` at the head of the result JSON. :class:`CommandModule` makes each command
package callable, the public Python API (:mod:`headgame.api`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError
from headgame.io import load_state, save_state
from headgame.outdir import nothing_to_resume


def provenance(cfg: Any) -> dict[str, Any]:
    """The header of every result JSON: version, UTC time, the config and the package versions."""
    from headgame.version import __version__
    from headgame.system import package_versions

    return {
        "headgame_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "versions": package_versions(),
    }


def progress_bar(enabled: bool, console: Any = None, *, fields: str | None = None, eta: bool = True):
    """A rich progress bar: description, bar, done/total, optional live ``fields`` text, elapsed, ETA.

    ``fields`` is a rich format string over the task's fields, e.g.
    ``"batches · {task.fields[tps]:.0f} tok/s"``; the task must then be added with those fields.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if fields:
        columns.append(TextColumn(fields))
    columns.append(TimeElapsedColumn())
    if eta:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, disable=not enabled, transient=False)


def identity_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the run-identity fields whose values differ between a saved run and now."""
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


def check_identity(saved: dict[str, Any], current: dict[str, Any], *, where: str | Path,
                   saved_hash: str | None = None, current_hash: str | None = None) -> None:
    """Refuse to resume ``where`` when its settings (or model weights) differ from this run's."""
    diff = identity_diff(saved, current)
    shown = [f"{k} ({saved.get(k)!r} in the run, {current.get(k)!r} now)" for k in diff]
    if saved_hash is not None and current_hash is not None and saved_hash != current_hash:
        shown.append(f"model weights ({saved_hash[:19]} in the run, {current_hash[:19]} now)")
    if shown:
        raise HeadgameError(
            f"cannot resume {where}: the run was made with different settings: {', '.join(shown)}; "
            "rerun with the same settings, or drop --resume to start over"
        )


# --- resumable state: one safetensors file per run, checked against the settings on --resume


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise nothing_to_resume(path.parent, f"no {path.name}: the run finished or stopped before its first checkpoint")
    state = load_state(path)
    if not isinstance(state, dict) or not {"config", "run"} <= set(state):
        raise HeadgameError(f"{path} is not a run state of this command; delete it and start over without --resume")
    return state


class StateFile:
    """The resumable state of one run: ``save(run)`` writes it, ``load()`` reads it back for
    ``--resume`` after checking that the settings and the model weights are the same."""

    def __init__(self, path: Path, cfg: Any, model_hash: str | None) -> None:
        self.path, self.cfg, self.model_hash = Path(path), cfg, model_hash

    def save(self, run: dict[str, Any]) -> None:
        save_state(self.path, {"config": self.cfg.run_identity(), "settings": self.cfg.to_dict(),
                               "model_hash": self.model_hash, "run": run})

    def load(self) -> dict[str, Any]:
        state = _read(self.path)
        check_identity(state["config"], self.cfg.run_identity(), where=self.path,
                       saved_hash=state.get("model_hash"), current_hash=self.model_hash)
        return state["run"]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def resume_config(cls: type, out: str | Path, state_file: str, fields: dict[str, Any]) -> Any:
    """The config of the interrupted run in ``out`` with ``fields`` put over it (a field that
    differs from the run's is then refused by the identity check, naming it)."""
    saved = _read(Path(out) / state_file).get("settings") or {}
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in saved.items() if k in known}, **fields, "out": str(out)})


def announce_resume(stage: str, done: int, total: int) -> None:
    """The one line a resumed run prints: where it continues."""
    print(f"resuming at {stage} {done}/{total}", file=sys.stderr, flush=True)


# --- the public Python API: every command package is callable ---------------------------------


@dataclass
class Result:
    """What a command returns to Python: its config, its result dict (as written to JSON) and
    the folder holding its artefacts."""

    command: str
    config: Any
    data: dict[str, Any]

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def summary(self) -> Any:
        return self.data.get("summary")

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __repr__(self) -> str:
        return f"Result(command={self.command!r}, out={str(self.out)!r}, keys={sorted(self.data)[:8]})"


class CommandModule(types.ModuleType):
    """Module type of a command package (``headgame.analyze`` …): calling the package runs the
    command, so ``headgame.analyze(model="tiny-llama", out="A")`` and ``import headgame.analyze``
    name the same thing. The runner is looked up in :mod:`headgame.api` on call, which keeps the
    package import free of torch."""

    def __call__(self, config: Any = None, /, *, progress: bool = False, resume: Any = None, **fields: Any) -> Result:
        import importlib

        api = importlib.import_module("headgame.api")
        return api.run_command(self.__name__.rsplit(".", 1)[-1], config, progress=progress, resume=resume, **fields)


def make_callable(module_name: str) -> None:
    """Turn the (already imported) package ``module_name`` into a :class:`CommandModule`."""
    sys.modules[module_name].__class__ = CommandModule
