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
from headgame.game.coupling import GradientGram, cosine_from_gram
from headgame.game.nash_mtl import nash_update
from headgame.game.schedule import lambda_scale
from headgame.io import AtomicDir, write_json_atomic, write_text_atomic
from headgame.models.tap import HeadTap
from headgame.runs import progress_bar
from headgame.train import checkpoint as ckpt
from headgame.train.config import TrainConfig, default_design_layer
from headgame.train.lora import add_lora, param_groups
from headgame.train.methods import METHODS
from headgame.train.objective import GameObjective


# Fault injection (tests only): the process kills itself with SIGKILL right after this step.
_FAULT_AFTER_STEP = os.environ.get("HEADGAME_FAULT_AFTER_STEP")


class Trainer:
    """One training run. ``Trainer(cfg).fit()`` trains, checkpoints and saves the adapter."""

    def __init__(self, cfg: TrainConfig, *, resume: str | None = None, progress: bool = True, console: Any = None) -> None:
        self.cfg, self.resume_from, self.show_progress, self.console = cfg, resume, progress, console
        self.out = Path(cfg.out)
        self.step = 0
        self._stop_signal: int | None = None

    # ================================================================ set-up
    def setup(self) -> "Trainer":
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from headgame.data import load_blocks
        from headgame.models.load import load_model

        cfg = self.cfg
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        if self.rank == 0:
            from headgame.runs import check_writable

            check_writable(self.out)
        set_seed(cfg.seed)
        loaded = load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        self.base_hash = loaded.info["hash"]
        base, self.tokenizer, self.layout = loaded
        layout = self.layout
        if layout.max_positions and cfg.seq_len > layout.max_positions:
            raise HeadgameError(f"--seq-len {cfg.seq_len} exceeds the model's maximum of {layout.max_positions} positions; use --seq-len {layout.max_positions} or less")
        self.design = [layout.check_layer(l) for l in (cfg.design_layers or [default_design_layer(layout.n_layers)])]
        self.method = METHODS.get(cfg.method)
        abt, ldb = self.method.regulariser_layers(cfg, self.design)
        self.abt_layers = [layout.check_layer(l) for l in abt]
        self.ldb_layers = [layout.check_layer(l) for l in ldb]
        self.tap_layers = sorted(set(self.design) | set(self.abt_layers) | set(self.ldb_layers))
        self.model = add_lora(base, layout, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, seed=cfg.seed)
        self.model.to(self.acc.device)
        self.groups = param_groups(self.model, layout)
        self._offsets = [0]  # where each trainable parameter starts in a flattened gradient
        for p in self.groups.params:
            self._offsets.append(self._offsets[-1] + p.numel())

        blocks = load_blocks(cfg.data, self.tokenizer, seq_len=cfg.seq_len, max_tokens=cfg.max_tokens,
                             text_field=cfg.text_field, data_dir=cfg.data_dir)
        n_val = max(1, math.ceil(cfg.val_fraction * blocks.n_blocks))
        if blocks.n_blocks - n_val < 1:
            raise HeadgameError(f"only {blocks.n_blocks} block(s) of {cfg.seq_len} tokens: nothing left to train on after the validation split; raise --max-tokens or lower --seq-len")
        self.train_ids = blocks.input_ids[: blocks.n_blocks - n_val]
        self.val_ids = blocks.input_ids[blocks.n_blocks - n_val:]
        self.global_batch = cfg.batch_size * cfg.grad_accum * self.world
        self.total_steps = len(self.train_ids) // self.global_batch
        if self.total_steps < 1:
            raise HeadgameError(f"{len(self.train_ids)} training blocks are fewer than one global batch of {self.global_batch}; raise --max-tokens or lower --batch-size/--grad-accum")
        gen = torch.Generator().manual_seed(cfg.seed)
        self.order = torch.randperm(len(self.train_ids), generator=gen)  # deterministic per seed

        self.optimizer = torch.optim.AdamW(self.groups.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, math.ceil(cfg.warmup_ratio * self.total_steps), self.total_steps)
        dist_sum = self._dist_sum if self.world > 1 else None
        self.objective = GameObjective(cfg, layout, self.groups, design=self.design, abt_layers=self.abt_layers,
                                       ldb_layers=self.ldb_layers, all_reduce_sum=dist_sum)
        eye = torch.eye(layout.n_heads, dtype=torch.float64)
        self.rho = {l: eye.clone() for l in self.tap_layers}  # no gradient seen yet: ρ = I
        self.alpha: list[float] | None = None
        self.alpha_tasks: list[str] | None = None
        if self.resume_from:
            self._restore(Path(self.resume_from))
        return self

    # ================================================================ distributed helpers
    def _dist_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Differentiable sum over processes (gradients flow back to every process)."""
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t)

    def _mean_across(self, flat: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return flat
        torch.distributed.all_reduce(flat)
        return flat / self.world

    def _sum_across(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    # ================================================================ one step
    def _micro_batches(self, step: int):
        cfg = self.cfg
        for m in range(cfg.grad_accum):
            start = (step * cfg.grad_accum + m) * cfg.batch_size * self.world + self.rank * cfg.batch_size
            idx = self.order[start:start + cfg.batch_size]
            yield self.train_ids[idx].to(self.acc.device)

    def _flat(self, grads, indices) -> torch.Tensor:
        flat = torch.zeros(self.groups.n_elements, device=self.acc.device, dtype=torch.float32)
        offsets = self._offsets
        for i, g in zip(indices, grads):
            if g is not None:
                flat[offsets[i]:offsets[i + 1]] = g.reshape(-1).float()
        return flat

    def _write_grads(self, flat: torch.Tensor) -> None:
        for i, p in enumerate(self.groups.params):
            p.grad = flat[self._offsets[i]:self._offsets[i + 1]].view_as(p).to(p.dtype).clone()

    def train_step(self) -> dict[str, Any]:
        cfg, layout = self.cfg, self.layout
        t0 = time.perf_counter()
        s = lambda_scale(self.step / self.total_steps, cfg.schedule, cfg.warmup_end, cfg.cooldown_start)
        lambdas = {"abt": cfg.lambda_abt * s, "ldb": cfg.lambda_ldb * s}
        grams = {l: GradientGram(layout.n_heads, layout.head_dim) for l in self.tap_layers}
        nash = self.method.arbitrates and cfg.arbitration == "nash_mtl"
        # α is reused for nash_update_every steps, but never across a change of the task set
        # (phase boundaries of the λ schedule)
        recompute = nash and (self.alpha is None or self.step % cfg.nash_update_every == 0
                              or self.alpha_tasks != self.objective.task_names(lambdas))
        # then CE goes first, alone, so ρ stays the CE gradient (docs/formulas.md, ρ)
        split_ce = self.method.ce_goes_alone(cfg, self.tap_layers, self.abt_layers, self.design)
        task_flat: dict[str, torch.Tensor] = {}
        logs: list[dict[str, float]] = []
        self.model.train()
        tap = HeadTap(self.model, layout, self.tap_layers, keep_graph=True,
                      on_grad=lambda l, g: grams[l].update(g))
        with tap:
            for ids in self._micro_batches(self.step):
                tap.capture_grads = True
                with self.acc.autocast():
                    logits = self.model(input_ids=ids, use_cache=False).logits
                ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
                heads = {l: tap.inputs[l].reshape(-1, layout.n_heads, layout.head_dim) for l in self.tap_layers}  # [B,T,H*dh] -> [N,H,dh]
                terms = self.objective.terms(self.model, ce, heads, self.rho, lambdas, cfg.grad_accum, warmup=self.step / self.total_steps < cfg.warmup_end)
                logs.append(terms.log)
                bad = [t.name for t in terms.tasks if not torch.isfinite(t.loss)]
                if bad:
                    raise _NonFinite(self.step, terms.log)
                if recompute:  # Nash-MTL: one gradient per task, on the parameters it reaches
                    for k, task in enumerate(terms.tasks):
                        idx = task.indices if task.indices is not None else list(range(len(self.groups.params)))
                        last = k == len(terms.tasks) - 1
                        grads = torch.autograd.grad(task.loss, [self.groups.params[i] for i in idx], retain_graph=not last, allow_unused=True)
                        tap.capture_grads = False  # only CE (the first task) feeds ρ
                        flat = self._flat(grads, idx)
                        task_flat[task.name] = task_flat[task.name] + flat if task.name in task_flat else flat
                else:
                    weights = dict(zip(self.alpha_tasks, self.alpha)) if nash and self.alpha_tasks else {}
                    weighted = [(weights.get(t.name, 1.0) if nash else 1.0) * t.loss for t in terms.tasks]
                    if split_ce and len(weighted) > 1:
                        weighted[0].backward(retain_graph=True)
                        tap.capture_grads = False
                        sum(weighted[1:]).backward()
                    else:
                        sum(weighted).backward()
        log = {k: sum(d.get(k, 0.0) for d in logs) / len(logs) for k in logs[0]}
        if recompute:
            names = list(task_flat)
            grads = [self._mean_across(task_flat[n]) for n in names]
            total, res = nash_update(grads)  # one task (λ = 0): the plain CE gradient, α = 1
            self.alpha, self.alpha_tasks = [float(a) for a in res.alpha], names
            self._write_grads(total)
            log["nash_alpha"] = dict(zip(names, self.alpha))
            if res.regularised:
                log["nash_regularised"] = True
        else:
            flat = self._flat([p.grad for p in self.groups.params], range(len(self.groups.params)))
            self._write_grads(self._mean_across(flat))
            if nash:
                log["nash_alpha"] = dict(zip(self.alpha_tasks or [], self.alpha or []))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.groups.params, cfg.clip)) if cfg.clip > 0 else float("nan")
        # ρ of this step's CE gradient, summed over micro-batches and processes (docs/formulas.md#rho)
        for l in self.tap_layers:
            gram = self._sum_across(grams[l].gram().to(self.acc.device)).cpu()
            new = cosine_from_gram(gram) if grams[l].n_tokens else self.rho[l]
            self.rho[l] = new if cfg.rho_ema == 0 or self.step == 0 else cfg.rho_ema * self.rho[l] + (1 - cfg.rho_ema) * new
        log.update(self.objective.gamma_log(self.model, self.rho))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        record = {
            "step": self.step + 1, **log, "lambda_abt": lambdas["abt"] if self.abt_layers else 0.0,
            "lambda_ldb": lambdas["ldb"] if self.ldb_layers else 0.0, "lr": self.scheduler.get_last_lr()[0],
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
            ids = self.val_ids[i:i + self.cfg.batch_size].to(self.acc.device)
            with self.acc.autocast():
                logits = self.model(input_ids=ids, use_cache=False).logits
            total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum"))
            count += ids[:, 1:].numel()
        self.model.train()
        return total / count

    # ================================================================ checkpoints
    def save_checkpoint(self) -> Path:
        return ckpt.save_trainer(self)

    def _restore(self, path: Path) -> None:
        self.resumed_from = ckpt.restore_trainer(self, path)

    # ================================================================ fit
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def fit(self) -> dict[str, Any]:
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
                    except _NonFinite as exc:
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


class _NonFinite(Exception):
    def __init__(self, step: int, values: dict[str, float]) -> None:
        super().__init__(step)
        self.step = step
        self.values = ", ".join(f"{k}={v:.4g}" for k, v in values.items())


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
