"""Atomic, exactly-resumable training checkpoints, stored without pickle.

A checkpoint is a folder ``OUT/checkpoints/step-000040`` written under a temporary name and
renamed when complete. It holds the adapter (peft format, safetensors), ``run_state.safetensors``
(optimizer and scheduler states and the RNG states of every process, through
:func:`headgame.io.save_state`: tensors plus JSON, so loading it runs no code) and
``trainer_state.json``: step, EMA normaliser, ρ cache, Nash-MTL weights, the config identity and
the model hash (data order is a pure function of seed and step).

Checkpoints of headgame before 0.2 held ``optimizer.pt``, ``scheduler.pt`` and ``rng.pt``
pickles; unpickling a crafted one runs arbitrary code, so such a checkpoint is refused before
anything in it is read.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headgame.errors import HeadgameError
from headgame.outdir import nothing_to_resume
from headgame.runs import check_identity
from headgame.io import AtomicDir, write_json_atomic
from headgame.io import load_state as load_run_state
from headgame.io import save_state as save_run_state
from headgame.models.identity import record_base

STATE = "trainer_state.json"
RUN_STATE = "run_state.safetensors"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]  # the key comes back as a uint32 tensor
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out: Path, step: int, *, model, optimizer, scheduler, state: dict[str, Any], rank: int, world: int,
         barrier=lambda: None, gather_rng=None, keep: int = 2, base: tuple[str, str] | None = None) -> Path:
    """Write checkpoint ``step`` (rank 0 writes; every rank's RNG state is gathered first); ``base``
    (spec, weights hash) is recorded beside the adapter."""
    rngs = gather_rng(rng_state()) if gather_rng is not None else [rng_state()]
    target = checkpoint_dir(out, step)
    if rank == 0:
        with AtomicDir(target) as tmp:
            model.save_pretrained(tmp / "adapter")
            if base is not None:
                record_base(tmp / "adapter", *base)
            save_run_state(tmp / RUN_STATE, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs})
            write_json_atomic(tmp / STATE, {**state, "step": step, "world_size": world})
        ckpts = sorted((out / "checkpoints").glob("step-*"))
        for old in ckpts[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return target


def _refuse_pickles(ckpt: Path) -> None:
    pickles = sorted(p.name for p in ckpt.glob("*.pt"))
    if pickles:
        raise HeadgameError(
            f"checkpoint {ckpt} holds pickled state ({', '.join(pickles)}) from an older headgame, which is no longer "
            "loaded (unpickling can run arbitrary code); start the run over without --resume, in a new --out"
        )


def find(path: Path) -> Path:
    """The checkpoint to resume from: ``path`` itself, or the newest one under ``path``.

    A checkpoint holding pickles is refused here, before its settings are even read."""
    if (path / STATE).exists():
        _refuse_pickles(path)
        return path
    ckpts = sorted((path / "checkpoints").glob("step-*")) if (path / "checkpoints").is_dir() else []
    ckpts = [c for c in ckpts if (c / STATE).exists()]
    if not ckpts:
        raise nothing_to_resume(path)
    _refuse_pickles(ckpts[-1])
    return ckpts[-1]


def load_state(ckpt: Path) -> dict[str, Any]:
    """The JSON trainer state of a checkpoint (plain data: step, config identity, EMA, ρ, α)."""
    return json.loads((ckpt / STATE).read_text())


def restore(ckpt: Path, *, model, optimizer, scheduler, rank: int) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    _refuse_pickles(ckpt)
    adapter = ckpt / "adapter"
    files = sorted(adapter.glob("*.safetensors"))
    if not files or not (ckpt / RUN_STATE).exists():
        raise HeadgameError(f"checkpoint {ckpt} has no adapter weights or {RUN_STATE}; it is incomplete, resume from an earlier one")
    run = load_run_state(ckpt / RUN_STATE)
    set_peft_model_state_dict(model, load_file(files[0]))
    optimizer.load_state_dict(run["optimizer"])
    scheduler.load_state_dict(run["scheduler"])
    rngs = run["rng"]
    set_rng_state(rngs[min(rank, len(rngs) - 1)])


# ---------------------------------------------------------------- the trainer's side
def trainer_state(trainer) -> dict[str, Any]:
    """What a :class:`~headgame.train.loop.Trainer` keeps beside the optimizer (JSON-safe)."""
    return {"config": trainer.cfg.run_identity(), "model_hash": trainer.base_hash, "total_steps": trainer.total_steps,
            **trainer.game.state_dict()}


def save_trainer(trainer) -> Path:
    """Checkpoint ``trainer`` at its current step (every process calls this)."""
    gather = None
    if trainer.world > 1:
        def gather(state):
            objs = [None] * trainer.world
            torch.distributed.all_gather_object(objs, state)  # in-memory exchange between our own processes
            return objs
    return save(trainer.out, trainer.step, model=trainer.model, optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                state=trainer_state(trainer), rank=trainer.rank, world=trainer.world,
                barrier=trainer.acc.wait_for_everyone, gather_rng=gather, keep=trainer.cfg.keep_checkpoints,
                base=(trainer.cfg.model, trainer.base_hash))


def restore_trainer(trainer, path: Path) -> Path:
    """Load the checkpoint at ``path`` into a set-up ``trainer`` after checking it is the same run."""
    found = find(path)
    state = load_state(found)
    check_identity(state["config"], trainer.cfg.run_identity(), where=found,
                   saved_hash=state.get("model_hash"), current_hash=trainer.base_hash)
    if state.get("world_size", 1) != trainer.world:
        raise HeadgameError(f"cannot resume {found}: it was written by {state.get('world_size')} processes, this run has "
                            f"{trainer.world}; resume with --nproc_per_node {state.get('world_size')} or start a new --out")
    restore(found, model=trainer.model, optimizer=trainer.optimizer, scheduler=trainer.scheduler, rank=trainer.rank)
    trainer.step = int(state["step"])
    trainer.game.load_state_dict(state)
    return found
