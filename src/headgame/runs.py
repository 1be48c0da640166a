"""The run scaffold every command shares: output-folder check, provenance header, progress bar
and the identity check behind ``--resume``.

A command's runner calls these in the same order: :func:`check_writable` before any model is
loaded, :func:`progress_bar` around its loop, :func:`check_identity` when resuming, and
:func:`provenance` at the head of the result JSON.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError


def check_writable(out: str | Path) -> Path:
    """Create ``out`` if needed and prove it is writable (one-line error naming --out otherwise)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".headgame-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HeadgameError(f"output folder {out} is not writable ({exc.strerror or exc}); choose another --out") from None
    return out


def provenance(cfg: Any) -> dict[str, Any]:
    """The header of every result JSON: version, UTC time, the config and the package versions."""
    from headgame import __version__
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
