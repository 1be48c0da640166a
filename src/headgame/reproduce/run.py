"""``headgame reproduce``: hold OUT, save the config, run the paper's stages, write the report.

OUT is never cleared: every stage reuses what finished with the same settings
(:mod:`headgame.reproduce.stages`), so rerunning the command continues an interrupted run and
``--stages`` picks parts of it. Two runs cannot share OUT at once (its lock file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from headgame.reproduce.config import ReproduceConfig
from headgame.reproduce.stages import StageStore


def run_reproduce(cfg: ReproduceConfig, *, progress: bool = False, console: Any = None,
                  say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``cfg.paper``'s chosen stages into ``cfg.out``; returns report.json's dict ({} without the report stage)."""
    from headgame.config import check_out_path
    from headgame.io import write_text_atomic
    from headgame.outdir import RunFolder

    check_out_path(cfg.out)
    out = Path(cfg.out)
    say = say or (lambda msg: print(msg, flush=True))
    with RunFolder(out, command="reproduce", resume=True):
        write_text_atomic(out / "config.yaml", cfg.to_yaml())
        store = StageStore(out, keep_work=cfg.keep_weights, say=say)
        if cfg.paper == "game-lora":
            from headgame.reproduce.gamelora import run_gamelora

            return run_gamelora(cfg, store, progress=progress, say=say, console=console)
        from headgame.reproduce.gtfep import run_gtfep

        return run_gtfep(cfg, store, progress=progress, say=say)
