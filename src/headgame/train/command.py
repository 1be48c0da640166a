"""``headgame train``: GAME-LoRA fine-tuning, its baselines and ablations."""

from __future__ import annotations

import argparse

from headgame.cliargs import add_config_flags, add_run_options, apply_threads, given
from headgame.errors import HeadgameError
from headgame.train.config import TrainConfig

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="GAME-LoRA fine-tuning (log-det barrier + adaptive Barlow Twins + Nash-MTL), CE and disagreement baselines",
        description=(
            "LoRA fine-tuning with the GAME-LoRA objective L_CE + λ_LDB·L_LDB + λ_ABT·L̂_ABT "
            "(docs/formulas.md), its ablations, and the CE / disagreement baselines. Writes the "
            "adapter (peft format), config.yaml, metrics.jsonl and checkpoints to --out."
        ),
    )
    add_config_flags(p, TrainConfig)
    add_run_options(p, resume="continue the run in DIR (a run folder or one of its checkpoints; default: --out) exactly")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headgame.train import checkpoint as ckpt
    from headgame.train.loop import Trainer, _Interrupted

    apply_threads(args)
    flags = given(args, TrainConfig)
    resume = None
    if args.resume is not None:
        from pathlib import Path

        resume = args.resume or flags.get("out", TrainConfig.out)
        found = ckpt.find(Path(resume))
        saved_cfg = Path(resume) / "config.yaml" if (Path(resume) / "config.yaml").exists() else found.parent.parent / "config.yaml"
        base = TrainConfig.from_yaml(saved_cfg).to_dict() if saved_cfg.exists() else {}
        saved_identity = ckpt.load_state(found)["config"]
        diff = sorted(k for k, v in flags.items() if k in saved_identity and saved_identity[k] != TrainConfig(**{**base, k: v}).to_dict()[k])
        if diff:
            shown = ", ".join(f"{k} ({saved_identity[k]!r} in the run, {flags[k]!r} now)" for k in diff)
            raise HeadgameError(f"--resume {resume}: the run was made with different settings: {shown}; drop those flags or start a new --out")
        base.update(flags)
        base.setdefault("out", str(found.parent.parent))
        cfg = TrainConfig.from_dict(base)
    else:
        cfg = TrainConfig(**flags)
    console = Console(stderr=True)
    trainer = Trainer(cfg, resume=resume, progress=not args.no_progress, console=console).setup()
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
