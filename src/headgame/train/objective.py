"""One optimizer step's losses and gradients for every training method (spec game-lora §4, §5.1).

The method registry :data:`METHODS` maps a name to the regularisers it adds to cross-entropy.
The gradient of each task is computed as cheaply as its graph allows: CE needs the full
backward, L_LDB reaches only the o_proj adapters of its layers (a weights-only graph), L_ABT only
the adapters at or below its layers. With ``sum`` arbitration (or Nash-MTL weights being reused)
one backward of the weighted sum suffices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from headgame.game.barlow import EMANormalizer, head_cross_correlation, output_disagreement
from headgame.game.coupling import gamma, interaction_matrix, weight_coupling
from headgame.game.losses import abt_loss, abt_pair_weights, log_det_barrier
from headgame.train.config import TrainConfig


@dataclass
class Task:
    """A weighted loss term and the parameter indices its gradient can reach."""

    name: str
    loss: Tensor  # already multiplied by λ(t) and divided by the accumulation steps
    indices: list[int] | None  # None = all trainable parameters


@dataclass
class StepTerms:
    tasks: list[Task]
    log: dict[str, float] = field(default_factory=dict)


def _mean(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean()


class GameObjective:
    """Builds the per-micro-batch tasks of a method from the tapped head outputs."""

    def __init__(self, cfg: TrainConfig, layout, groups, *, design: list[int], abt_layers: list[int],
                 ldb_layers: list[int], all_reduce_sum: Callable[[Tensor], Tensor] | None) -> None:
        self.cfg, self.layout, self.groups = cfg, layout, groups
        self.design, self.abt_layers, self.ldb_layers = design, abt_layers, ldb_layers
        self.all_reduce_sum = all_reduce_sum
        self.ema = EMANormalizer(cfg.ema_target, cfg.ema_rate, cfg.ema_mode)

    def omega(self, model, layer: int) -> Tensor:
        return weight_coupling(self.layout.head_slices(model, layer).float())  # spec §3.1

    def task_names(self, lambdas: dict[str, float]) -> list[str]:
        """The tasks :meth:`terms` returns under ``lambdas``, in the same order."""
        if self.cfg.method == "disagreement":
            return ["ce", "disagreement"]
        if self.cfg.method != "game-lora":
            return ["ce"]
        return ["ce"] + [name for name, layers in (("ldb", self.ldb_layers), ("abt", self.abt_layers)) if lambdas[name] > 0 and layers]

    def terms(self, model, ce: Tensor, heads: dict[int, Tensor], rho: dict[int, Tensor],
              lambdas: dict[str, float], accum: int, warmup: bool) -> StepTerms:
        """Tasks of one micro-batch. ``heads[l]`` is [N, H, dh] (graph-connected), ``rho[l]`` the
        previous step's gradient coupling (detached)."""
        cfg = self.cfg
        out = StepTerms([Task("ce", ce / accum, None)], {"ce": float(ce.detach())})
        if cfg.method == "disagreement":
            dis = _mean([output_disagreement(heads[l], all_reduce_sum=self.all_reduce_sum) for l in self.design])
            out.tasks.append(Task("disagreement", cfg.disagreement_lambda * dis / accum, None))
            out.log["disagreement"] = float(dis.detach())
            return out
        if cfg.method != "game-lora":
            return out
        if lambdas["ldb"] > 0 and self.ldb_layers:
            # G = ω ⊙ ρ with ρ detached: the gradient reaches W_O only (spec §4.1, §12 #5)
            ldb = _mean([self._ldb(model, l, rho) for l in self.ldb_layers])
            out.tasks.append(Task("ldb", lambdas["ldb"] * ldb / accum, self.groups.ldb_indices(self.ldb_layers)))
            out.log["ldb"] = float(ldb.detach())
        if lambdas["abt"] > 0 and self.abt_layers:
            raws = []
            for l in self.abt_layers:
                with torch.no_grad():
                    g_det = interaction_matrix(self.omega(model, l), rho[l].float())
                w = abt_pair_weights(g_det, cfg.w_alpha, cfg.w_beta, cfg.w_tau, mode=cfg.pair_weights)
                c = head_cross_correlation(heads[l], all_reduce_sum=self.all_reduce_sum)  # spec §4.2
                raws.append(abt_loss(c, w, subtract_identity=cfg.bt_target == "identity"))
            raw = _mean(raws)
            normalised = self.ema(raw, warmup=warmup)  # spec §4.3
            out.tasks.append(Task("abt", lambdas["abt"] * normalised / accum, self.groups.abt_indices(self.abt_layers)))
            out.log.update(abt_raw=float(raw.detach()), abt=float(normalised.detach()))
        return out

    def _ldb(self, model, layer: int, rho: dict[int, Tensor]) -> Tensor:
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
