"""Atomic, exactly-resumable training checkpoints.

A checkpoint is a folder ``OUT/checkpoints/step-000040`` written under a temporary name and
renamed when complete. It holds the adapter (peft format), optimizer and scheduler states, the
RNG states of every process, and ``trainer_state.json``: step, EMA normaliser, ρ cache, Nash-MTL
weights, the config identity and the model hash (data order is a pure function of seed and step).
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
from headgame.io import AtomicDir, write_json_atomic

STATE = "trainer_state.json"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out: Path, step: int, *, model, optimizer, scheduler, state: dict[str, Any], rank: int, world: int,
         barrier=lambda: None, gather_rng=None, keep: int = 2) -> Path:
    """Write checkpoint ``step`` (rank 0 writes; every rank's RNG state is gathered first)."""
    rngs = gather_rng(rng_state()) if gather_rng is not None else [rng_state()]
    target = checkpoint_dir(out, step)
    if rank == 0:
        with AtomicDir(target) as tmp:
            model.save_pretrained(tmp / "adapter")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rngs, tmp / "rng.pt")
            write_json_atomic(tmp / STATE, {**state, "step": step, "world_size": world})
        ckpts = sorted((out / "checkpoints").glob("step-*"))
        for old in ckpts[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return target


def find(path: Path) -> Path:
    """The checkpoint to resume from: ``path`` itself, or the newest one under ``path``."""
    if (path / STATE).exists():
        return path
    ckpts = sorted((path / "checkpoints").glob("step-*")) if (path / "checkpoints").is_dir() else []
    ckpts = [c for c in ckpts if (c / STATE).exists()]
    if not ckpts:
        raise HeadgameError(f"no checkpoint found in {path}; pass a run folder written by headgame train (or one of its checkpoints/step-* folders)")
    return ckpts[-1]


def load_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / STATE).read_text())


def restore(ckpt: Path, *, model, optimizer, scheduler, rank: int) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = ckpt / "adapter"
    files = sorted(adapter.glob("*.safetensors"))
    if not files:
        raise HeadgameError(f"checkpoint {ckpt} has no adapter weights; it is incomplete, resume from an earlier one")
    set_peft_model_state_dict(model, load_file(files[0]))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    rngs = torch.load(ckpt / "rng.pt", weights_only=False)
    set_rng_state(rngs[min(rank, len(rngs) - 1)])
