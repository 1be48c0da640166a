"""The training loop: set-up → fit (steps, validation, checkpoints) → save (litgpt-style chain).

Runs on HF Accelerate: one CPU, one GPU (bf16 autocast with ``--mixed-precision bf16``), or
several processes launched with ``accelerate launch``. The model is not wrapped in DDP: every
process computes its task gradients, they are averaged across processes by hand, and the
Barlow-Twins statistics and ρ are summed over processes, so k processes on a global batch take the
same step as one process on it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from headgame.errors import HeadgameError
from headgame.io import AtomicDir, write_json_atomic, write_text_atomic
from headgame.models.identity import record_base
from headgame.outdir import RunFolder, note
from headgame.runs import announce_resume, progress_bar
from headgame.train import checkpoint as ckpt
from headgame.train.config import DEFAULT_SEQ_LEN, TrainConfig
from headgame.train.lora import add_lora, param_groups
from headgame.train.step import GameStep, NonFiniteLoss, game_layers


# Fault injection (tests only): the process kills itself with SIGKILL right after this step.
_FAULT_AFTER_STEP = os.environ.get("HEADGAME_FAULT_AFTER_STEP")
ARTEFACTS = ("metrics.jsonl", "config.yaml", "summary.json", "adapter", "merged", "checkpoints", "tensorboard")
"""What ``headgame train`` writes into --out (the main result first); a fresh run clears them."""


class Trainer:
    """One training run. ``Trainer(cfg).fit()`` trains, checkpoints and saves the adapter."""

    def __init__(self, cfg: TrainConfig, *, resume: str | None = None, progress: bool = True, console: Any = None) -> None:
        self.cfg, self.resume_from, self.show_progress, self.console = cfg, resume, progress, console
        self.out = Path(cfg.out)
        self.step = 0
        self._stop_signal: int | None = None
        self.folder = RunFolder(self.out, command="train", artefacts=ARTEFACTS, resume=bool(resume), identity=cfg.run_identity())

    # ================================================================ set-up
    def setup(self) -> "Trainer":
        """Claim --out (rank 0; headgame.outdir), then build the run; a failed set-up lets --out go."""
        try:
            return self._setup()
        except BaseException:
            self.folder.release()
            raise

    def _setup(self) -> "Trainer":
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from headgame.config import check_out_path, with_values
        from headgame.data import check_source
        from headgame.data.chat import check_chat_tokenizer, detect_format, load_training_data
        from headgame.models.layout import fit_seq_len
        from headgame.models.load import load_model

        from headgame.config import resolve_device

        cfg = self.cfg
        device = resolve_device(cfg.device)  # a GPU asked for and absent fails here, in one line
        if device.type == "cuda" and device.index is not None and "LOCAL_RANK" not in os.environ:
            torch.cuda.set_device(device)  # one process on --device cuda:N (a launcher picks the GPU itself)
        self.acc = Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        # every input is checked (the model loaded, nothing written) before rank 0 claims --out
        if self.rank == 0:
            check_out_path(self.out)
        check_source(cfg.data, text_field=cfg.text_field, data_dir=cfg.data_dir)
        fmt = detect_format(cfg.data, text_field=cfg.text_field, data_dir=cfg.data_dir)  # text or a chat format
        set_seed(cfg.seed)
        loaded = load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        self.base_hash = loaded.info["hash"]
        base, self.tokenizer, self.layout = loaded
        layout = self.layout
        if fmt != "text":
            check_chat_tokenizer(self.tokenizer, cfg.data)
        seq_len, fitted = fit_seq_len(cfg.seq_len, DEFAULT_SEQ_LEN, layout.max_positions)
        self.cfg = cfg = with_values(cfg, seq_len=seq_len)
        self.design, self.abt_layers, self.ldb_layers = game_layers(cfg, layout.n_layers)
        self._skip_short_layers(base, layout)
        self.model = add_lora(base, layout, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, seed=cfg.seed)  # checks --lora-r against the model
        if self.rank == 0:  # only rank 0 holds --out; it is held until fit ends
            if fitted:
                note(fitted)
            self.folder.identity = cfg.run_identity()
            self.folder.acquire()
        self.model.to(self.acc.device)
        self.groups = param_groups(self.model, layout)
        if cfg.compile:  # in place, outside the attention the taps hook into (models/device.py)
            from headgame.models.device import compile_outside_attention

            compile_outside_attention(self.model, layout.blocks(self.model), layout.attn_path.split(".")[0])

        blocks = load_training_data(cfg.data, self.tokenizer, fmt=fmt, seq_len=cfg.seq_len, max_tokens=cfg.max_tokens,
                                    loss_on=cfg.loss_on, text_field=cfg.text_field, data_dir=cfg.data_dir)
        n_val = max(1, math.ceil(cfg.val_fraction * blocks.n_blocks))
        if blocks.n_blocks - n_val < 1:
            raise HeadgameError(f"only {blocks.n_blocks} block(s) of {cfg.seq_len} tokens: nothing left to train on after the validation split; raise --max-tokens or lower --seq-len")
        n_train = blocks.n_blocks - n_val
        # chat rows are padded and carry labels (-100 = no loss); packed text has neither
        rows = {"ids": blocks.input_ids, "mask": None if blocks.labels is None else blocks.attention_mask, "labels": blocks.labels}
        self.train_rows = {k: None if v is None else v[:n_train] for k, v in rows.items()}
        self.val_rows = {k: None if v is None else v[n_train:] for k, v in rows.items()}
        self.train_ids, self.val_ids = self.train_rows["ids"], self.val_rows["ids"]
        self.global_batch = cfg.batch_size * cfg.grad_accum * self.world
        self.total_steps = len(self.train_ids) // self.global_batch
        if self.total_steps < 1:
            raise HeadgameError(f"{len(self.train_ids)} training blocks are fewer than one global batch of {self.global_batch}; raise --max-tokens or lower --batch-size/--grad-accum")
        gen = torch.Generator().manual_seed(cfg.seed)
        self.order = torch.randperm(len(self.train_ids), generator=gen)  # deterministic per seed

        self.optimizer = torch.optim.AdamW(self.groups.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, math.ceil(cfg.warmup_ratio * self.total_steps), self.total_steps)
        # the per-step work (tasks, arbitration, ρ), shared with headgame.integrations.transformers
        self.game = GameStep(cfg, layout, self.groups, design=self.design, abt_layers=self.abt_layers,
                             ldb_layers=self.ldb_layers, world=self.world)
        if self.resume_from:
            self._restore(Path(self.resume_from))
        return self

    def _skip_short_layers(self, model, layout) -> None:
        """An unevenly pruned model (headgame prune) keeps fewer query heads in some layers than
        its config (the layout) names; the head taps cannot read those. CE only logs Γ there, so
        those layers are left out of Γ; a method whose tasks read the heads is refused."""
        from headgame.models.surgery import head_counts, is_pruned
        from headgame.train.methods import METHODS

        if not is_pruned(model):
            return
        counts = head_counts(model, layout)
        short = sorted({l for l in (*self.design, *self.abt_layers, *self.ldb_layers) if counts[l][0] != layout.n_heads})
        if not short:
            return
        if METHODS.get(self.cfg.method).reads_heads or self.abt_layers or self.ldb_layers:
            full = [l for l, (nq, _) in enumerate(counts) if nq == layout.n_heads]
            hint = f" or pass --design-layers among the layers that kept every head ({','.join(map(str, full))})" if full else ""
            raise HeadgameError(f"layer(s) {','.join(map(str, short))} of {self.cfg.model} are pruned to fewer than its {layout.n_heads} "
                                f"query heads per layer, which --method {self.cfg.method} cannot read yet (per-layer head counts); "
                                f"use --method ce{hint}")
        self.design = [l for l in self.design if l not in short]
        if self.rank == 0:
            note(f"layer(s) {','.join(map(str, short))} are pruned to fewer heads: Γ is not logged there")

    # ================================================================ state carried between steps
    # ρ, α and the objective (with its Barlow-Twins EMA) live in the GameStep (train/step.py);
    # checkpoints save and restore them through these names.
    objective = property(lambda self: self.game.objective)
    rho = property(lambda self: self.game.rho, lambda self, v: setattr(self.game, "rho", v))
    alpha = property(lambda self: self.game.alpha, lambda self, v: setattr(self.game, "alpha", v))
    alpha_tasks = property(lambda self: self.game.alpha_tasks, lambda self, v: setattr(self.game, "alpha_tasks", v))

    # ================================================================ one step
    def _micro_batches(self, step: int):
        cfg = self.cfg
        for m in range(cfg.grad_accum):
            start = (step * cfg.grad_accum + m) * cfg.batch_size * self.world + self.rank * cfg.batch_size
            idx = self.order[start:start + cfg.batch_size]
            yield {k: None if v is None else v[idx].to(self.acc.device) for k, v in self.train_rows.items()}

    def train_step(self) -> dict[str, Any]:
        cfg, game = self.cfg, self.game
        t0 = time.perf_counter()
        game.begin(self.step, self.total_steps)
        for b in self._micro_batches(self.step):
            game.micro_batch(self.model, b["ids"], accum=cfg.grad_accum, attention_mask=b["mask"], labels=b["labels"],
                             autocast=self.acc.autocast)
        log = game.finish(self.model)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.groups.params, cfg.clip)) if cfg.clip > 0 else float("nan")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        record = {
            "step": self.step + 1, **log, "lambda_abt": game.lambdas["abt"] if self.abt_layers else 0.0,
            "lambda_ldb": game.lambdas["ldb"] if self.ldb_layers else 0.0, "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm, "tokens_per_s": self.global_batch * cfg.seq_len / dt, "seconds": dt,
        }
        self.step += 1
        return record

    # ================================================================ validation
    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        total, count = 0.0, 0
        for i in range(0, len(self.val_ids), self.cfg.batch_size):
            b = {k: None if v is None else v[i:i + self.cfg.batch_size].to(self.acc.device) for k, v in self.val_rows.items()}
            extra = {} if b["mask"] is None else {"attention_mask": b["mask"]}
            with self.acc.autocast():
                logits = self.model(input_ids=b["ids"], use_cache=False, **extra).logits
            targets = (b["ids"] if b["labels"] is None else b["labels"])[:, 1:]  # -100 = no loss
            total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum"))
            count += int((targets != -100).sum())
        self.model.train()
        return total / count

    # ================================================================ checkpoints
    def save_checkpoint(self) -> Path:
        return ckpt.save_trainer(self)

    def _restore(self, path: Path) -> None:
        self.resumed_from = ckpt.restore_trainer(self, path)
        if self.rank == 0:
            announce_resume("step", self.step, self.total_steps)

    # ================================================================ fit
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def fit(self) -> dict[str, Any]:
        try:
            return self._fit()
        finally:
            self.folder.release()

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        main = self.rank == 0
        metrics_path = self.out / "metrics.jsonl"
        if main:
            write_text_atomic(self.out / "config.yaml", cfg.to_yaml())
            kept = []
            if self.step and metrics_path.exists():  # drop records past the checkpoint we resume from
                kept = [l for l in metrics_path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= self.step]
            write_text_atomic(metrics_path, "".join(l + "\n" for l in kept))
        writer = self._tensorboard() if main and cfg.tensorboard else None
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = progress_bar(self.show_progress and main, self.console, fields="steps · CE {task.fields[ce]:.3f} · Γ {task.fields[gamma]:.3f}")
        last_good: Path | None = getattr(self, "resumed_from", None)
        try:
            with bar, open(metrics_path, "a") if main else _Null() as mfile:
                task = bar.add_task(cfg.method, total=self.total_steps, completed=self.step, ce=float("nan"), gamma=float("nan"))
                while self.step < self.total_steps:
                    try:
                        rec = self.train_step()
                    except NonFiniteLoss as exc:
                        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
                        raise HeadgameError(f"non-finite loss at step {exc.step + 1} ({exc.values}); training stopped, {where}; lower --lr or check the data") from None
                    if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == self.total_steps):
                        rec["val_loss"] = self.validate()
                    elif self.step == self.total_steps:
                        rec["val_loss"] = self.validate()
                    if main:
                        mfile.write(json.dumps(rec) + "\n")
                        mfile.flush()
                        if writer is not None:
                            for k, v in rec.items():
                                if isinstance(v, (int, float)):
                                    writer.add_scalar(k, v, rec["step"])
                    bar.update(task, advance=1, ce=rec.get("ce", float("nan")), gamma=rec.get("gamma", float("nan")))
                    stopping = self._stop_signal is not None
                    if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or stopping:
                        last_good = self.save_checkpoint()
                    if stopping:
                        raise _Interrupted(self.step, last_good, self._stop_signal)
                    if _FAULT_AFTER_STEP and self.step == int(_FAULT_AFTER_STEP):
                        os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume tests
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if writer is not None:
                writer.close()
        return self.save_final()

    def save_final(self) -> dict[str, Any]:
        self.acc.wait_for_everyone()
        summary: dict[str, Any] = {}
        if self.rank == 0:
            with AtomicDir(self.out / "adapter") as tmp:
                self.model.save_pretrained(tmp)
                # name the base in adapter_config.json here: peft would look the name up on the hub while saving
                record_base(tmp, self.cfg.model, self.base_hash)
            records = [json.loads(l) for l in (self.out / "metrics.jsonl").read_text().splitlines() if l.strip()]
            summary = {
                "method": self.cfg.method, "steps": self.step, "design_layers": self.design,
                "abt_layers": self.abt_layers, "ldb_layers": self.ldb_layers, "base_model_hash": self.base_hash,
                "trainable_parameters": self.groups.n_elements,
                "first": records[0] if records else None, "last": records[-1] if records else None,
                "final_val_loss": next((r["val_loss"] for r in reversed(records) if "val_loss" in r), None),
            }
            if self.cfg.save_merged:
                merged = self.model.merge_and_unload()
                with AtomicDir(self.out / "merged") as tmp:
                    merged.save_pretrained(tmp, safe_serialization=True)
                    self.tokenizer.save_pretrained(tmp)
                    record_base(tmp, self.cfg.model, self.base_hash)
                summary["merged"] = str(self.out / "merged")
            write_json_atomic(self.out / "summary.json", summary)
        self.acc.wait_for_everyone()
        return summary

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise HeadgameError("--tensorboard needs the tensorboard package; run: pip install 'headgame[tensorboard]'") from None
        return SummaryWriter(str(self.out / "tensorboard"))


class _Interrupted(Exception):
    def __init__(self, step: int, checkpoint: Path | None, signum: int) -> None:
        super().__init__(step)
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, *_):
        pass

    def flush(self):
        pass
