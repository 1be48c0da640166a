"""The objective of one optimizer step: cross-entropy plus the tasks of the training method.

:class:`GameObjective` holds what the methods of :mod:`headgame.train.methods` share (the
Barlow-Twins EMA normaliser, ω from the current weights, the barrier at a layer) and asks the
configured method for its tasks. The gradient of each task is computed as cheaply as its graph
allows: CE needs the full backward, L_LDB reaches only the o_proj adapters of its layers (a
weights-only graph), L_ABT only the adapters at or below its layers. With ``sum`` arbitration (or
Nash-MTL weights being reused) one backward of the weighted sum suffices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from headgame.game.barlow import EMANormalizer
from headgame.game.coupling import gamma, interaction_matrix, weight_coupling
from headgame.game.losses import log_det_barrier
from headgame.train.config import TrainConfig
from headgame.train.methods import METHODS
from headgame.train.terms import StepTerms, Task

__all__ = ["GameObjective", "StepTerms", "Task"]


class GameObjective:
    """Builds the per-micro-batch tasks of a method from the tapped head outputs."""

    def __init__(self, cfg: TrainConfig, layout, groups, *, design: list[int], abt_layers: list[int],
                 ldb_layers: list[int], all_reduce_sum: Callable[[Tensor], Tensor] | None) -> None:
        self.cfg, self.layout, self.groups = cfg, layout, groups
        self.design, self.abt_layers, self.ldb_layers = design, abt_layers, ldb_layers
        self.all_reduce_sum = all_reduce_sum
        self.ema = EMANormalizer(cfg.ema_target, cfg.ema_rate, cfg.ema_mode)
        self.method = METHODS.get(cfg.method)

    def omega(self, model, layer: int) -> Tensor:
        return weight_coupling(self.layout.head_slices(model, layer).float())  # ω (docs/formulas.md)

    def task_names(self, lambdas: dict[str, float]) -> list[str]:
        """The tasks :meth:`terms` returns under ``lambdas``, in the same order."""
        return ["ce"] + self.method.task_names(self, lambdas)

    def terms(self, model, ce: Tensor, heads: dict[int, Tensor], rho: dict[int, Tensor],
              lambdas: dict[str, float], accum: int, warmup: bool) -> StepTerms:
        """Tasks of one micro-batch. ``heads[l]`` is [N, H, dh] (graph-connected), ``rho[l]`` the
        previous step's gradient coupling (detached)."""
        out = StepTerms([Task("ce", ce / accum, None)], {"ce": float(ce.detach())})
        self.method.add_terms(self, out, model, heads, rho, lambdas, accum, warmup)
        return out

    def ldb(self, model, layer: int, rho: dict[int, Tensor]) -> Tensor:
        """L_LDB = −log det(G + εI) at ``layer`` (docs/formulas.md), G from the current ω and ρ."""
        g = interaction_matrix(self.omega(model, layer), rho[layer].float())
        if not torch.isfinite(g).all():  # diverged weights: report a non-finite loss, not an eigh error
            return g.sum() * float("nan")
        return log_det_barrier(g, eps=self.cfg.ldb_eps)

    def gamma_log(self, model, rho: dict[int, Tensor]) -> dict[str, float]:
        """Γ (all variants) at the design layers from the current weights and ρ."""
        log: dict[str, float] = {}
        with torch.no_grad():
            for i, l in enumerate(self.design):
                gam = gamma(interaction_matrix(self.omega(model, l).double(), rho[l].double()))
                suffix = "" if i == 0 else f"_l{l}"
                log.update({f"gamma{suffix}": gam["gamma"], f"gamma_norm{suffix}": gam["gamma_norm"],
                            f"gamma_abs{suffix}": gam["gamma_abs"]})
        return log
