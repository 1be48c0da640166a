"""The gradient work of one GAME-LoRA optimizer step, shared by ``headgame train`` (train/loop.py)
and the transformers integration (headgame.integrations.transformers), so both take the same update.

:class:`GameStep` owns what carries over between steps — ρ of the previous step's CE gradient
(docs/formulas.md#rho) and the Nash-MTL weights α (docs/formulas.md#nash-mtl) — and runs a step
as ``begin`` → ``micro_batch`` (forward, the method's tasks, their gradients) once per micro-batch
→ ``finish`` (arbitration, the gradient written to ``p.grad``, the new ρ, Γ). The caller clips the
gradient and steps the optimizer. Several processes: task gradients are averaged and the
Barlow-Twins statistics and ρ summed over them by hand (the model is not wrapped in DDP).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headgame.game.coupling import GradientGram, cosine_from_gram
from headgame.game.nash_mtl import nash_update
from headgame.game.schedule import lambda_scale
from headgame.models.tap import HeadTap
from headgame.train.config import TrainConfig, default_design_layer
from headgame.train.lora import ParamGroups
from headgame.train.methods import METHODS
from headgame.train.objective import GameObjective
from headgame.train.repnash import RepresentationNash, representation_cut


def game_layers(cfg: TrainConfig, n_layers: int) -> tuple[list[int], list[int], list[int]]:
    """(design, Barlow-Twins, barrier) layers of ``cfg`` for a model of ``n_layers``
    (docs/formulas.md#design-layer; negative layers resolved, each list in the written order)."""
    from headgame.models.layout import parse_layers

    design = parse_layers(cfg.design_layers or [default_design_layer(n_layers)], n_layers, flag="--design-layers", ordered=True)
    abt, ldb = METHODS.get(cfg.method).regulariser_layers(cfg, design)
    abt = parse_layers(abt, n_layers, flag="--abt-layers", ordered=True) if abt else []
    ldb = parse_layers(ldb, n_layers, flag="--ldb-layers", ordered=True) if ldb else []
    return design, abt, ldb


class NonFiniteLoss(Exception):
    """A task loss of step ``step`` (0-based) is not finite; ``values`` lists the logged terms."""

    def __init__(self, step: int, values: dict[str, float]) -> None:
        super().__init__(step)
        self.step = step
        self.values = ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def _dist_sum(t: Tensor) -> Tensor:
    """Differentiable sum over processes (gradients flow back to every process)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


class GameStep:
    """The per-step work of a training method on ``groups`` (the trainable parameters of ``layout``'s model)."""

    def __init__(self, cfg: TrainConfig, layout, groups: ParamGroups, *, design: list[int], abt_layers: list[int],
                 ldb_layers: list[int], world: int = 1) -> None:
        self.cfg, self.layout, self.groups, self.world = cfg, layout, groups, world
        self.design, self.abt_layers, self.ldb_layers = design, abt_layers, ldb_layers
        self.tap_layers = sorted(set(design) | set(abt_layers) | set(ldb_layers))
        self.method = METHODS.get(cfg.method)
        self.device = groups.params[0].device
        self.offsets = [0]  # where each trainable parameter starts in a flattened gradient
        for p in groups.params:
            self.offsets.append(self.offsets[-1] + p.numel())
        self.objective = GameObjective(cfg, layout, groups, design=design, abt_layers=abt_layers,
                                       ldb_layers=ldb_layers, all_reduce_sum=_dist_sum if world > 1 else None)
        eye = torch.eye(layout.n_heads, dtype=torch.float64)
        self.rho = {l: eye.clone() for l in self.tap_layers}  # no gradient seen yet: ρ = I
        self.alpha: list[float] | None = None
        self.alpha_tasks: list[str] | None = None
        # --nash-gradients representation: the Gram at the Barlow-Twins layer's block input (train/repnash.py)
        self.repnash: RepresentationNash | None = None
        if cfg.nash_gradients == "representation" and self.method.arbitrates and abt_layers:
            cut = representation_cut(abt_layers, self.tap_layers)
            self.repnash = RepresentationNash(groups, cut, flat=self._flat, mean_across=self._mean_across,
                                              sum_across=self._sum_across, world=world)
        self.lambdas: dict[str, float] = {}
        self.open = False  # between begin and finish

    # ================================================================ what carries over between steps
    def state_dict(self) -> dict[str, Any]:
        """ρ, α, the Barlow-Twins EMA and the representation-Nash gains (JSON-safe): what a resumed
        run needs to take the same steps as an uninterrupted one."""
        return {"ema": self.objective.ema.state_dict(), "rho": {str(l): r.tolist() for l, r in self.rho.items()},
                "alpha": self.alpha, "alpha_tasks": self.alpha_tasks,
                "nash_representation": dict(self.repnash.state) if self.repnash is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.objective.ema.load_state_dict(state["ema"])
        self.rho = {int(l): torch.tensor(r, dtype=torch.float64) for l, r in state["rho"].items()}
        self.alpha, self.alpha_tasks = state.get("alpha"), state.get("alpha_tasks")
        if self.repnash is not None and state.get("nash_representation"):
            self.repnash.state = dict(state["nash_representation"])

    # ================================================================ distributed helpers
    def _mean_across(self, flat: Tensor) -> Tensor:
        if self.world == 1:
            return flat
        torch.distributed.all_reduce(flat)
        return flat / self.world

    def _sum_across(self, t: Tensor) -> Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def _flat(self, grads, indices) -> Tensor:
        flat = torch.zeros(self.groups.n_elements, device=self.device, dtype=torch.float32)
        offsets = self.offsets
        for i, g in zip(indices, grads):
            if g is not None:
                flat[offsets[i]:offsets[i + 1]] = g.reshape(-1).float()
        return flat

    def _write_grads(self, flat: Tensor) -> None:
        for i, p in enumerate(self.groups.params):
            p.grad = flat[self.offsets[i]:self.offsets[i + 1]].view_as(p).to(p.dtype).clone()

    # ================================================================ one step
    def begin(self, step: int, total_steps: int) -> None:
        """Start optimizer step ``step`` (0-based) of ``total_steps``: λ(t), fresh Gram accumulators."""
        cfg = self.cfg
        self.step, self.total_steps = step, total_steps
        s = lambda_scale(step / total_steps, cfg.schedule, cfg.warmup_end, cfg.cooldown_start)
        self.lambdas = {"abt": cfg.lambda_abt * s, "ldb": cfg.lambda_ldb * s}
        self._grams = {l: GradientGram(self.layout.n_heads, self.layout.head_dim) for l in self.tap_layers}
        self._nash = self.method.arbitrates and cfg.arbitration == "nash_mtl"
        # α is reused for nash_update_every steps, but never across a change of the task set
        # (phase boundaries of the λ schedule)
        self._recompute = self._nash and (self.alpha is None or step % cfg.nash_update_every == 0
                                          or self.alpha_tasks != self.objective.task_names(self.lambdas))
        # then CE goes first, alone, so ρ stays the CE gradient (docs/formulas.md, ρ)
        self._split_ce = self.method.ce_goes_alone(cfg, self.tap_layers, self.abt_layers, self.design)
        # representation Nash-MTL when L_ABT is among the tasks (without it the exact Gram costs no extra backward)
        self._rep = (self._recompute and self.repnash is not None and "abt" in self.objective.task_names(self.lambdas))
        if self._rep:
            self.repnash.begin(log_exact=cfg.nash_log_exact, calibrate_every=cfg.nash_calibrate_every)
        self._task_flat: dict[str, Tensor] = {}
        self._logs: list[dict[str, float]] = []
        self.open = True

    def micro_batch(self, model: nn.Module, input_ids: Tensor, *, accum: int, attention_mask: Tensor | None = None,
                    labels: Tensor | None = None, autocast: Callable[[], Any] = contextlib.nullcontext,
                    **model_kwargs: Any) -> Tensor:
        """Forward one micro-batch, build the method's tasks and accumulate their gradients.

        ``labels`` (unshifted, -100 = no loss) default to ``input_ids``; ``attention_mask`` keeps
        padding out of ρ and the head statistics. Returns the detached L_CE / ``accum``.
        """
        cfg, layout, grams = self.cfg, self.layout, self._grams
        model.train()
        cut = [self.repnash.cut] if self._rep else []
        tap = HeadTap(model, layout, self.tap_layers, keep_graph=True, on_grad=lambda l, g: grams[l].update(g), block_inputs=cut)
        with tap:
            tap.set_mask(attention_mask)
            tap.capture_grads = True
            extra = dict(model_kwargs, attention_mask=attention_mask) if attention_mask is not None else model_kwargs
            with autocast():
                logits = model(input_ids=input_ids, use_cache=False, **extra).logits
            targets = input_ids if labels is None else labels
            ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets[:, 1:].reshape(-1))
            if attention_mask is None:
                heads = {l: tap.inputs[l].reshape(-1, layout.n_heads, layout.head_dim) for l in self.tap_layers}  # [B,T,H*dh] -> [N,H,dh]
            else:  # [B,T,H*dh] -> real tokens [N,H*dh] -> [N,H,dh]
                keep = attention_mask.bool()
                heads = {l: tap.inputs[l][keep].reshape(-1, layout.n_heads, layout.head_dim) for l in self.tap_layers}
            terms = self.objective.terms(model, ce, heads, self.rho, self.lambdas, accum,
                                         warmup=self.step / self.total_steps < cfg.warmup_end)
            self._logs.append(terms.log)
            if any(not torch.isfinite(t.loss) for t in terms.tasks):
                self.open = False
                raise NonFiniteLoss(self.step, terms.log)
            if self._rep:  # Nash-MTL on the representation: gradients above and at the cut (train/repnash.py)
                self.repnash.micro_batch(terms.tasks, tap.block_inputs.get(cut[0]),
                                         before_ce=lambda: setattr(tap, "capture_grads", True),
                                         after_ce=lambda: setattr(tap, "capture_grads", False))
            elif self._recompute:  # Nash-MTL: one gradient per task, on the parameters it reaches
                task_flat = self._task_flat
                for k, task in enumerate(terms.tasks):
                    idx = task.indices if task.indices is not None else list(range(len(self.groups.params)))
                    last = k == len(terms.tasks) - 1
                    grads = torch.autograd.grad(task.loss, [self.groups.params[i] for i in idx], retain_graph=not last, allow_unused=True)
                    tap.capture_grads = False  # only CE (the first task) feeds ρ
                    flat = self._flat(grads, idx)
                    task_flat[task.name] = task_flat[task.name] + flat if task.name in task_flat else flat
            else:
                weights = dict(zip(self.alpha_tasks, self.alpha)) if self._nash and self.alpha_tasks else {}
                weighted = [(weights.get(t.name, 1.0) if self._nash else 1.0) * t.loss for t in terms.tasks]
                if self._split_ce and len(weighted) > 1:
                    weighted[0].backward(retain_graph=True)
                    tap.capture_grads = False
                    sum(weighted[1:]).backward()
                else:
                    sum(weighted).backward()
        return ce.detach() / accum

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """Arbitrate, write the step's gradient to ``p.grad`` of every trainable parameter, update
        ρ and return the step's log (terms averaged over micro-batches, α, Γ at the design layers)."""
        cfg, logs = self.cfg, self._logs
        self.open = False
        log: dict[str, Any] = {k: sum(d.get(k, 0.0) for d in logs) / len(logs) for k in logs[0]}
        if self._rep:
            names = self.objective.task_names(self.lambdas)
            total, res, extra = self.repnash.finish(names)
            self.alpha, self.alpha_tasks = [float(a) for a in res.alpha], names
            self._write_grads(total)
            log["nash_alpha"] = dict(zip(names, self.alpha))
            log.update(extra)
            if res.regularised:
                log["nash_regularised"] = True
        elif self._recompute:
            names = list(self._task_flat)
            grads = [self._mean_across(self._task_flat[n]) for n in names]
            total, res = nash_update(grads)  # one task (λ = 0): the plain CE gradient, α = 1
            self.alpha, self.alpha_tasks = [float(a) for a in res.alpha], names
            self._write_grads(total)
            log["nash_alpha"] = dict(zip(names, self.alpha))
            if res.regularised:
                log["nash_regularised"] = True
        else:
            flat = self._flat([p.grad for p in self.groups.params], range(len(self.groups.params)))
            self._write_grads(self._mean_across(flat))
            if self._nash:
                log["nash_alpha"] = dict(zip(self.alpha_tasks or [], self.alpha or []))
        # ρ of this step's CE gradient, summed over micro-batches and processes (docs/formulas.md#rho)
        for l in self.tap_layers:
            gram = self._sum_across(self._grams[l].gram().to(self.device)).cpu()
            new = cosine_from_gram(gram) if self._grams[l].n_tokens else self.rho[l]
            self.rho[l] = new if cfg.rho_ema == 0 or self.step == 0 else cfg.rho_ema * self.rho[l] + (1 - cfg.rho_ema) * new
        log.update(self.objective.gamma_log(model, self.rho))
        return log
