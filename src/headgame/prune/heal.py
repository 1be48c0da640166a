"""Healing a pruned model: a short LoRA fine-tune, merged back into the weights.

:func:`heal` trains LoRA adapters on a model folder (a pruned one written by
:func:`headgame.models.surgery.save_pruned`, or any model spec, e.g. the unpruned model of a
control run) with ``headgame.train`` for a budget of training tokens, merges the adapter exactly
into the weights and saves a plain model folder again::

    OUT/train/      the training run (adapter/, checkpoints/, metrics.jsonl, summary.json)
    OUT/model/      the merged model: a pruned folder (the pruning record kept, with
                    extra["healed"]) or, for an unpruned input, save_pretrained + tokenizer
    OUT/heal.json   the summary returned by heal()

A second call with the same settings returns heal.json without training; an interrupted run
resumes from the newest checkpoint of OUT/train (``headgame train --resume``).

GAME-LoRA reads every head of its design layers through the head taps, which know one head
count per model; a layer pruned to fewer heads than the config names (uneven pruning) is refused
for it (heal with method "ce"). Under CE such layers are only left out of the Γ log, and the
unevenly pruned fused QKV projections (``HeadGatherLinear``, Phi-3 and Falcon) get no adapter (train/lora.py).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError

HEAL_METHODS = ("ce", "game-lora")
HEAL_FILE = "heal.json"
_OWN_FIELDS = ("model", "out", "method", "seed", "data", "data_dir", "seq_len", "batch_size", "max_tokens", "device")


def _source(model_dir: str | Path) -> str:
    path = Path(model_dir).expanduser()
    return str(path.resolve()) if path.exists() else str(model_dir)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _budget(tokens: int, seq_len: int, per_step_blocks: int, val_fraction: float) -> tuple[int, int]:
    """(optimizer steps, --max-tokens): the steps of ``tokens`` training tokens (at least one) and
    a budget whose packed blocks leave that many global batches after the validation split."""
    steps = max(1, tokens // (seq_len * per_step_blocks))
    train_blocks = steps * per_step_blocks
    n = train_blocks + 1
    while n - max(1, math.ceil(val_fraction * n)) < train_blocks:
        n += 1
    return steps, n * seq_len


def _short_layers(loaded) -> list[int]:
    """Layers holding fewer query heads than the layout (the config) names: unevenly pruned."""
    from headgame.models.surgery import head_counts, is_pruned

    if not is_pruned(loaded.model):
        return []
    return [l for l, (nq, _) in enumerate(head_counts(loaded.model, loaded.layout)) if nq != loaded.layout.n_heads]


def _checkpointed(train_dir: Path) -> bool:
    from headgame.train.checkpoint import STATE

    return (train_dir / "checkpoints").is_dir() and any((c / STATE).exists() for c in (train_dir / "checkpoints").glob("step-*"))


def _save(loaded, adapter: Path, target: Path, healed: dict[str, Any]) -> None:
    """Merge ``adapter`` into ``loaded`` and save the result as a model folder at ``target``."""
    from headgame.io import AtomicDir, write_json_atomic
    from headgame.models.adapters import attach_adapter
    from headgame.models.identity import record_base
    from headgame.models.surgery import PRUNING_FILE, pruning_record, save_pruned

    merged = attach_adapter(loaded, str(adapter), merge=True).model
    if loaded.info.get("kind") == "pruned":
        if pruning_record(merged) is None:
            raise HeadgameError(f"merging the adapter lost the pruning record of {healed['source']}; this is a bug, please report it")
        old = _read_json(Path(loaded.info["source"]) / PRUNING_FILE) or {}
        save_pruned(merged, loaded.tokenizer, target, extra={**(old.get("extra") or {}), "healed": healed})
        return
    with AtomicDir(target) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        record_base(tmp, healed["source"], loaded.info["hash"])  # a merged model: eval names its base
        write_json_atomic(tmp / "headgame_healed.json", healed)


def heal(model_dir: str | Path, out_dir: str | Path, *, tokens: int, method: str = "ce", seed: int = 42,
         data: str | None = None, data_dir: str | None = None, seq_len: int = 256, batch_size: int = 4,
         threads: int | None = None, device: str = "cpu", progress: bool = False,
         extra_train: dict | None = None) -> dict:
    """Fine-tune LoRA on ``model_dir`` for ``tokens`` training tokens, merge it and save
    ``out_dir/model``; returns (and writes to ``out_dir/heal.json``) the summary.

    ``data``/``data_dir`` are those of ``headgame train`` (default: its default corpus);
    ``extra_train``: further TrainConfig fields (lr, lora_r, grad_accum, ...)."""
    import headgame
    from headgame.config import DEFAULT_SEQ_LEN
    from headgame.io import write_json_atomic
    from headgame.models.layout import fit_seq_len
    from headgame.models.load import load_model
    from headgame.train.config import TrainConfig

    if method not in HEAL_METHODS:
        raise HeadgameError(f"heal method {method!r} is not valid; choose one of {', '.join(HEAL_METHODS)}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise HeadgameError(f"heal tokens must be a positive integer (training tokens), got {tokens!r}")
    extra_train = dict(extra_train or {})
    clash = sorted(set(extra_train) & set(_OWN_FIELDS))
    if clash:
        raise HeadgameError(f"extra_train sets {', '.join(clash)}, which heal sets itself; pass them as heal's own arguments")
    out = Path(out_dir)
    train_dir, model_out, heal_json = out / "train", out / "model", out / HEAL_FILE
    source = _source(model_dir)
    settings = {"source": source, "tokens": tokens, "method": method, "seed": seed, "data": data or TrainConfig.data,
                "data_dir": data_dir, "seq_len": seq_len, "batch_size": batch_size, "extra_train": extra_train}
    settings = json.loads(json.dumps(settings, default=str))  # as heal.json will hold them
    saved = _read_json(heal_json)
    same = saved is not None and saved.get("settings") == settings
    if same and saved.get("complete") and model_out.is_dir():
        return saved

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    loaded = load_model(str(model_dir))
    pruned = loaded.info.get("kind") == "pruned"
    short = _short_layers(loaded)
    if method == "game-lora" and short and "design_layers" not in extra_train:
        raise HeadgameError(
            f"game-lora cannot heal {model_dir}: layer(s) {','.join(map(str, short))} are pruned to fewer than the "
            f"{loaded.layout.n_heads} query heads its config names, and GAME-LoRA's head taps need one head count per "
            "model (per-layer head counts are not supported); heal with --heal-method ce"
        )
    seq, _ = fit_seq_len(seq_len, DEFAULT_SEQ_LEN, loaded.layout.max_positions)
    per_step = batch_size * int(extra_train.get("grad_accum", 1))
    steps_wanted, max_tokens = _budget(tokens, seq, per_step, float(extra_train.get("val_fraction", TrainConfig.val_fraction)))

    out.mkdir(parents=True, exist_ok=True)
    fields = dict(model=str(model_dir), out=str(train_dir), method=method, seed=seed, data=settings["data"],
                  data_dir=data_dir, seq_len=seq, batch_size=batch_size, max_tokens=max_tokens, device=device, **extra_train)
    adapter = train_dir / "adapter"
    train = _read_json(train_dir / "summary.json") if same and saved.get("train_done") and adapter.is_dir() else None
    resumed = train is not None
    if train is None:  # train (again), continuing from a checkpoint of these settings
        resume = str(train_dir) if same and _checkpointed(train_dir) else None
        resumed = resume is not None
        write_json_atomic(heal_json, {"settings": settings, "complete": False, "train_done": False})
        train = headgame.train(progress=progress, resume=resume, **fields).data
        write_json_atomic(heal_json, {"settings": settings, "complete": False, "train_done": True})

    steps = int(train.get("steps") or 0)
    trained = steps * per_step * seq
    healed = {"tokens": trained, "tokens_requested": tokens, "method": method, "seed": seed, "source": source}
    _save(loaded, adapter, model_out, healed)
    first, last = train.get("first") or {}, train.get("last") or {}
    summary: dict[str, Any] = {
        "complete": True, "train_done": True, "settings": settings, "kind": "pruned" if pruned else "unpruned",
        "method": method, "seed": seed, "tokens_requested": tokens, "tokens": trained, "steps": steps,
        "steps_planned": steps_wanted, "seq_len": seq, "batch_size": batch_size, "max_tokens": max_tokens,
        "train_loss_first": first.get("ce"), "train_loss_last": last.get("ce"), "final_val_loss": train.get("final_val_loss"),
        "short_layers": short, "resumed": resumed, "seconds": round(time.perf_counter() - t0, 3),
        "paths": {"model": str(model_out), "train": str(train_dir), "adapter": str(adapter), "heal_json": str(heal_json)},
    }
    if steps < steps_wanted:
        summary["note"] = f"the data held {steps} of the {steps_wanted} steps asked for; pass more text with data"
    write_json_atomic(heal_json, summary)
    return summary
