"""The resumable-stage scaffold the long benchmarks share (prune_curves, prune_heal, nash_representation).

A stage is one ``headgame`` command run in a work folder outside the repository. When it finishes,
its small result files are copied to the stage's results folder (committed), with its wall time,
and the stage is skipped from then on; an interrupted stage resumes with ``--resume`` when its
work folder holds a checkpoint, and otherwise starts again in a clean folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def headgame_bin() -> str:
    """The ``headgame`` script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / "headgame")


def run_stage(name: str, *, done: Path, marker: str, out: Path, resume: bool, command: Sequence[str],
              keep: Sequence[str], restart: bool = True) -> bool:
    """Run ``command`` (without --out/--resume) for stage ``name`` unless ``done/marker`` exists.

    ``resume``: continue ``out`` (``--resume out``), else start it (``--out out``), first removing
    what an earlier attempt left there when ``restart``. Copies the files of ``keep`` that exist
    from ``out`` to ``done`` and writes ``done/wall_seconds.txt``. Returns False when skipped."""
    if (done / marker).exists():
        print(f"{name}: done, skipped", flush=True)
        return False
    cmd = [*command, *(["--resume", str(out)] if resume else ["--out", str(out)])]
    if not resume and restart and out.exists():
        shutil.rmtree(out)  # died before its first checkpoint: start again
    print(f"{name}: {'resuming' if resume else 'starting'}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    done.mkdir(parents=True, exist_ok=True)
    for f in keep:
        if (out / f).exists():
            shutil.copy2(out / f, done / f)
    seconds = time.perf_counter() - t0
    (done / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    print(f"{name}: finished in {seconds:.0f} s", flush=True)
    return True
