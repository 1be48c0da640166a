"""The output folder is a run's home.

While a run writes into ``--out`` it holds the folder's lock, so a second run there is refused
instead of silently overwriting the first. The folder belongs to one command (a marker file
written when a run claims it), so ``analyze`` cannot overwrite a ``train`` run's config.yaml.
A fresh run removes what the previous run of its command left there (a figure the new settings
no longer draw, an old checkpoint a later ``--resume`` would pick up); other files are kept.
``--resume`` on a folder with nothing to resume is an error, not a silent fresh start.

Two files of the folder are the scaffold's own:

- ``.headgame.lock`` while a run holds the folder: pid, host and command, created with
  ``O_CREAT | O_EXCL`` and held with ``flock``, so the lock of a killed run (``kill -9``) is
  seen to be stale and taken over;
- ``.headgame-run.json``: the command that owns the folder, when it claimed it, the headgame
  version, the hash of the run identity and the names of the artefacts it writes.

A command's runner holds the folder with :class:`RunFolder` (a context manager) or the
:func:`claims_out` decorator; each command declares its artefact names once, next to its runner.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fnmatch
import functools
import hashlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from headgame.dist import is_main
from headgame.errors import HeadgameError
from headgame.io import write_json_atomic
from headgame.version import __version__

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: fall back to pid liveness
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".headgame.lock"
MARKER_FILE = ".headgame-run.json"
_OWN = frozenset({LOCK_FILE, MARKER_FILE, ".headgame-write-test"})


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


def note(message: str) -> None:
    """One ``note: ...`` line on stderr (stdout stays for results)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def nothing_to_resume(out: str | Path, what: str = "no checkpoint") -> HeadgameError:
    """The one error of ``--resume`` on a folder that holds no state to continue from."""
    return HeadgameError(f"nothing to resume in {out} ({what}); drop --resume to start a new run")


def identity_hash(identity: dict[str, Any]) -> str:
    """A short, stable hash of a run identity (``ConfigMixin.run_identity``)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_marker(out: str | Path) -> dict[str, Any] | None:
    """The marker of the run that owns ``out``, or None (no marker, or not a readable one)."""
    try:
        data = json.loads((Path(out) / MARKER_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def matching(out: Path, patterns: Sequence[str]) -> list[str]:
    """Names of the entries of ``out`` (top level) that match one of ``patterns`` (fnmatch)."""
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError:
        return []
    return [n for n in names if n not in _OWN and any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


class RunFolder:
    """Hold ``out`` for one run of ``command`` (``with RunFolder(...):`` or acquire/release).

    ``artefacts``: the names (fnmatch patterns, top level) the command writes into ``out``; a
    fresh run of the same command removes them first. ``state``: names of which one must exist
    for ``resume`` (empty: the caller checks). ``accepts``: commands whose folders this one may
    also write into without owning them (``report`` into an ``analyze`` folder). ``identity``:
    the run identity recorded in the marker.
    """

    def __init__(self, out: str | Path, *, command: str, artefacts: Sequence[str] = (), resume: bool = False,
                 state: Sequence[str] = (), accepts: Sequence[str] = (), identity: dict[str, Any] | None = None) -> None:
        self.out, self.command, self.resume = Path(out), command, bool(resume)
        self.artefacts, self.state, self.accepts = tuple(artefacts), tuple(state), tuple(accepts)
        self.identity = identity
        self._fd: int | None = None

    def __enter__(self) -> "RunFolder":
        return self.acquire()

    def __exit__(self, *exc: Any) -> bool:
        self.release()
        return False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunFolder":
        """Create and lock the folder, check it may hold this run, clear a stale run, mark it."""
        check_writable(self.out)
        self._lock()
        try:
            self._claim()
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Give the lock up (unlink first, then drop the flock: a waiter then sees a new file)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.out / LOCK_FILE):
                (self.out / LOCK_FILE).unlink()
        except OSError:
            pass
        os.close(fd)

    # ------------------------------------------------------------------ the lock
    def _lock(self) -> None:
        path = self.out / LOCK_FILE
        for _ in range(50):
            created = True
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                created = False
                try:
                    fd = os.open(path, os.O_RDWR)
                except FileNotFoundError:
                    continue  # released meanwhile
            except OSError as exc:
                raise HeadgameError(f"cannot create the lock file {path} ({exc.strerror or exc}); choose another --out") from None
            if not self._flock(fd, path, created):
                os.close(fd)
                continue
            old = None if created else _read_holder(fd)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                    "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
            os.fsync(fd)
            self._fd = fd
            if old:
                note(f"took over the lock of headgame {old.get('command', '?')} (pid {old.get('pid', '?')}) in {self.out}, "
                     "which is no longer running")
            return
        raise HeadgameError(f"could not lock output folder {self.out} (its lock file keeps changing); choose another --out")

    def _flock(self, fd: int, path: Path, created: bool) -> bool:
        """Lock ``fd``; False when the file was replaced meanwhile (try again); raises when held."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return self._by_pid(fd, path, created)  # no flock on this file system
                holder = _read_holder(fd)
                os.close(fd)
                raise self._in_use(holder) from None
            return _same_file(fd, path)
        return self._by_pid(fd, path, created)

    def _by_pid(self, fd: int, path: Path, created: bool) -> bool:
        if created:
            return True
        holder = _read_holder(fd) or {}
        if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
            note(f"took over the lock of headgame {holder.get('command', '?')} (pid {holder.get('pid', '?')}) in {self.out}, "
                 "which is no longer running")
            path.unlink(missing_ok=True)
            return False
        os.close(fd)
        raise self._in_use(holder)

    def _in_use(self, holder: dict[str, Any] | None) -> HeadgameError:
        holder = holder or {}
        who = f"headgame {holder['command']}" if holder.get("command") else "another headgame run"
        where = f"pid {holder.get('pid', '?')}"
        if holder.get("host") and holder["host"] != socket.gethostname():
            where += f" on {holder['host']}"
        return HeadgameError(f"output folder {self.out} is in use by {who} ({where}); "
                             "wait for it to finish or choose another --out")

    # ------------------------------------------------------------------ the claim
    def _claim(self) -> None:
        marker = read_marker(self.out)
        owner = marker["command"] if marker else None
        if owner is not None and owner != self.command and owner not in self.accepts:
            theirs = matching(self.out, marker.get("artefacts") or [])
            if theirs:
                shared = [n for n in theirs if any(fnmatch.fnmatchcase(n, p) for p in self.artefacts)]
                what = f"overwrite its {', '.join(shared)}" if shared else "mix its files into it"
                raise HeadgameError(f"{self.out} holds a headgame {owner} run; {self.command} would {what}; choose another --out")
            owner = marker = None  # a claim whose run left nothing behind
        # an unmarked folder holding this command's main result: a run of an older headgame
        earlier = owner == self.command or (marker is None and bool(self.artefacts) and bool(matching(self.out, self.artefacts[:1])))
        if self.resume:
            if self.state and not matching(self.out, self.state):
                raise nothing_to_resume(self.out)
        elif earlier:
            self._clear()
        guest_in_unmarked = bool(self.accepts) and owner is None and bool(matching(self.out, ["*"]))
        if owner in self.accepts or guest_in_unmarked or (self.resume and owner == self.command):
            return  # the folder keeps its owner
        write_json_atomic(self.out / MARKER_FILE, {
            "command": self.command, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "headgame_version": __version__,
            "identity": identity_hash(self.identity) if self.identity is not None else None,
            "artefacts": list(self.artefacts),
        })

    def _clear(self) -> None:
        names = matching(self.out, self.artefacts)
        if not names:
            return
        n_files = 0
        for name in names:
            path = self.out / name
            if path.is_dir() and not path.is_symlink():
                n_files += sum(1 for p in path.rglob("*") if not p.is_dir())
                shutil.rmtree(path)
            else:
                n_files += 1
                path.unlink()
        note(f"cleared the previous {self.command} run in {self.out} ({n_files} file{'s' if n_files != 1 else ''})")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode("utf-8") or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def claims_out(command: str, artefacts: Sequence[str], *, state: Sequence[str] = (),
               accepts: Sequence[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a runner ``fn(cfg, *, resume=False, ...)`` so it holds ``cfg.out`` while it runs.

    ``resume`` is read from the keyword arguments; a call with ``write=False`` writes nothing and
    so claims nothing, nor does a process other than rank 0 of several (:mod:`headgame.dist`):
    only rank 0 writes. The declared names are kept on the runner as ``fn.artefacts``.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def runner(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("write") is False or not is_main():
                return fn(cfg, *args, **kwargs)
            identity = cfg.run_identity() if hasattr(cfg, "run_identity") else None
            with RunFolder(cfg.out, command=command, artefacts=artefacts, resume=bool(kwargs.get("resume")),
                           state=state, accepts=accepts, identity=identity):
                return fn(cfg, *args, **kwargs)

        runner.artefacts = tuple(artefacts)  # type: ignore[attr-defined]
        return runner

    return wrap
