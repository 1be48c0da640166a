"""``headgame train``: GAME-LoRA fine-tuning, its baselines and ablations."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from headgame.errors import HeadgameError
from headgame.train.config import TrainConfig

HELP = {
    "model": "base model: packaged name, .gguf, folder or hub id",
    "data": "training text: default, gutenberg, a file/folder/JSONL, hf:NAME",
    "method": "ce, game-lora or disagreement",
    "design_layers": "layer(s) of G and the regularisers, e.g. 24 or 16,19,22 (default: the paper's depth 19/24)",
    "abt_layers": "Barlow-Twins layers (default: the design layers)",
    "ldb_layers": "log-det-barrier layers (default: the design layers)",
    "pair_weights": "adaptive, uniform or inverse",
    "bt_target": "identity or zero",
    "arbitration": "nash_mtl or sum",
    "schedule": "three_phase or constant",
    "max_tokens": "token budget of training + validation text (paper: 20M)",
    "nash_update_every": "recompute the Nash-MTL weights every N steps (1 = reference)",
    "mixed_precision": "no, bf16 or fp16 (autocast; statistics stay fp32)",
}
_BOOL = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("bool", bool)}
_SKIP = {"extra", "out"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="GAME-LoRA fine-tuning (log-det barrier + adaptive Barlow Twins + Nash-MTL), CE and disagreement baselines",
        description=(
            "LoRA fine-tuning with the GAME-LoRA objective L_CE + λ_LDB·L_LDB + λ_ABT·L̂_ABT "
            "(spec game-lora §4), its ablations, and the CE / disagreement baselines. Writes the "
            "adapter (peft format), config.yaml, metrics.jsonl and checkpoints to --out."
        ),
    )
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = HELP.get(f.name, f.name.replace("_", " "))
        if f.name in _BOOL:
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
        else:
            kind = {int: int, float: float}.get(type(default), str)
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=f"{text} (default {default})")
    p.add_argument("--out", default=argparse.SUPPRESS, help="output folder (default train-out)")
    p.add_argument("--resume", default=None, help="continue the run in this folder (or checkpoint) exactly")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headgame.train import checkpoint as ckpt
    from headgame.train.loop import Trainer, _Interrupted

    given = _given(args)
    if args.resume:
        from pathlib import Path

        found = ckpt.find(Path(args.resume))
        saved_cfg = Path(args.resume) / "config.yaml" if (Path(args.resume) / "config.yaml").exists() else found.parent.parent / "config.yaml"
        base = TrainConfig.from_yaml(saved_cfg).to_dict() if saved_cfg.exists() else {}
        saved_identity = ckpt.load_state(found)["config"]
        diff = sorted(k for k, v in given.items() if k in saved_identity and saved_identity[k] != TrainConfig(**{**base, k: v}).to_dict()[k])
        if diff:
            shown = ", ".join(f"{k} ({saved_identity[k]!r} in the run, {given[k]!r} now)" for k in diff)
            raise HeadgameError(f"--resume {args.resume}: the run was made with different settings: {shown}; drop those flags or start a new --out")
        base.update(given)
        base.setdefault("out", str(found.parent.parent))
        cfg = TrainConfig.from_dict(base)
    else:
        cfg = TrainConfig(**given)
    console = Console(stderr=True)
    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress, console=console).setup()
    try:
        summary = trainer.fit()
    except _Interrupted as exc:
        print(f"stopped at step {exc.step}: checkpoint {exc.checkpoint}; continue with: headgame train --resume {cfg.out}")
        return 128 + exc.signum
    if trainer.rank == 0:
        last = summary.get("last") or {}
        print(f"trained {summary['steps']} steps ({cfg.method}); final CE {last.get('ce', float('nan')):.4f}, "
              f"Γ {last.get('gamma', float('nan')):.4f}, val loss {summary.get('final_val_loss') or float('nan'):.4f}")
        print(f"adapter: {trainer.out / 'adapter'} · metrics: {trainer.out / 'metrics.jsonl'}")
    return 0
