"""The registry of training methods: what each adds to cross-entropy, and how.

A :class:`Method` says which loss terms ("tasks") it adds to L_CE at a step, builds them from
the tapped head outputs, and declares the flags that only it understands. The trainer and the
objective ask the method; no code outside this module compares ``cfg.method`` with a name.
Adding a method is one class here, registered under its ``--method`` name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from headgame.game.barlow import head_cross_correlation, output_disagreement
from headgame.game.coupling import interaction_matrix
from headgame.game.losses import abt_loss, abt_pair_weights
from headgame.errors import HeadgameError
from headgame.registry import Registry
from headgame.train.terms import StepTerms, Task

if TYPE_CHECKING:
    from torch import Tensor

    from headgame.train.config import TrainConfig
    from headgame.train.objective import GameObjective


def _mean(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean()


@dataclass(frozen=True)
class Method:
    """A training method: L_CE plus the tasks of :meth:`add_terms`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    own_flags: ClassVar[dict[str, object]] = {}
    """Config fields (with their defaults) that only this method reads."""
    arbitrates: ClassVar[bool] = False
    """Whether --arbitration (Nash-MTL) chooses the task weights."""
    reads_heads: ClassVar[bool] = True
    """Whether the tasks read the design layers' heads (False: the taps there only log Γ)."""

    def regulariser_layers(self, cfg: TrainConfig, design: list[int]) -> tuple[list[int], list[int]]:
        """(Barlow-Twins layers, barrier layers) the method regularises."""
        return [], []

    def task_names(self, objective: GameObjective, lambdas: dict[str, float]) -> list[str]:
        """The names of the tasks :meth:`add_terms` appends after "ce", in order."""
        return []

    def add_terms(self, objective: GameObjective, out: StepTerms, model, heads: dict[int, Tensor],
                  rho: dict[int, Tensor], lambdas: dict[str, float], accum: int, warmup: bool) -> None:
        """Append this method's tasks to ``out`` (which already holds the CE task)."""

    def ce_goes_alone(self, cfg: TrainConfig, tap_layers: list[int], abt_layers: list[int], design: list[int]) -> bool:
        """Whether CE needs its own backward first so that ρ stays the pure CE gradient: a
        regulariser above another tapped layer would reach that layer's o_proj input."""
        return any(r < a for r in tap_layers for a in abt_layers)

    def check(self, cfg: TrainConfig) -> None:
        """Refuse flags set away from their default that only another method reads."""
        for other in METHODS.values():
            if other is self:
                continue
            changed = [k for k, default in other.own_flags.items() if k not in self.own_flags and getattr(cfg, k) != default]
            if changed:
                flags = ", ".join("--" + k.replace("_", "-") for k in changed)
                raise HeadgameError(f"{flags} only apply to --method {other.name} (got --method {self.name}); drop them or switch method")


METHODS: Registry[Method] = Registry("training method", "--method")


class CE(Method):
    name = "ce"
    description = "LoRA with cross-entropy only (the paper's baseline)"
    reads_heads = False


class GameLora(Method):
    name = "game-lora"
    description = "L_CE + λ_LDB·L_LDB + λ_ABT·L̂_ABT, arbitrated by Nash-MTL (docs/formulas.md)"
    own_flags = {"no_ldb": False, "no_abt": False, "pair_weights": "adaptive", "bt_target": "identity",
                 "arbitration": "nash_mtl", "nash_gradients": "parameters", "nash_calibrate_every": 10, "nash_log_exact": False, "abt_layers": None, "ldb_layers": None}
    arbitrates = True

    def check(self, cfg):
        super().check(cfg)
        if cfg.no_ldb and cfg.no_abt:
            raise HeadgameError("--no-ldb together with --no-abt leaves game-lora with cross-entropy only; use --method ce instead")

    def regulariser_layers(self, cfg, design):
        abt = [] if cfg.no_abt else list(cfg.abt_layers or design)
        ldb = [] if cfg.no_ldb else list(cfg.ldb_layers or design)
        return abt, ldb

    def task_names(self, objective, lambdas):
        return [name for name, layers in (("ldb", objective.ldb_layers), ("abt", objective.abt_layers))
                if lambdas[name] > 0 and layers]

    def add_terms(self, objective, out, model, heads, rho, lambdas, accum, warmup):
        cfg = objective.cfg
        if lambdas["ldb"] > 0 and objective.ldb_layers:
            # G = ω ⊙ ρ with ρ detached: the gradient reaches W_O only (docs/formulas.md, L_LDB)
            ldb = _mean([objective.ldb(model, l, rho) for l in objective.ldb_layers])
            out.tasks.append(Task("ldb", lambdas["ldb"] * ldb / accum, objective.groups.ldb_indices(objective.ldb_layers)))
            out.log["ldb"] = float(ldb.detach())
        if lambdas["abt"] > 0 and objective.abt_layers:
            raws = []
            for l in objective.abt_layers:
                with torch.no_grad():
                    g_det = interaction_matrix(objective.omega(model, l), rho[l].float())
                w = abt_pair_weights(g_det, cfg.w_alpha, cfg.w_beta, cfg.w_tau, mode=cfg.pair_weights)
                c = head_cross_correlation(heads[l], all_reduce_sum=objective.all_reduce_sum)  # docs/formulas.md, C_ij
                raws.append(abt_loss(c, w, subtract_identity=cfg.bt_target == "identity"))
            raw = _mean(raws)
            normalised = objective.ema(raw, warmup=warmup)  # docs/formulas.md, EMA normaliser
            out.tasks.append(Task("abt", lambdas["abt"] * normalised / accum, objective.groups.abt_indices(objective.abt_layers)))
            out.log.update(abt_raw=float(raw.detach()), abt=float(normalised.detach()))


class Disagreement(Method):
    name = "disagreement"
    description = "L_CE + λ·disagreement of head outputs (Li et al. 2018, output variant)"
    own_flags = {"disagreement_lambda": 1.0}

    def task_names(self, objective, lambdas):
        return ["disagreement"]

    def add_terms(self, objective, out, model, heads, rho, lambdas, accum, warmup):
        dis = _mean([output_disagreement(heads[l], all_reduce_sum=objective.all_reduce_sum) for l in objective.design])
        out.tasks.append(Task("disagreement", objective.cfg.disagreement_lambda * dis / accum, None))
        out.log["disagreement"] = float(dis.detach())

    def ce_goes_alone(self, cfg, tap_layers, abt_layers, design):
        # the disagreement term at a higher design layer reaches the lower layers' o_proj inputs
        return super().ce_goes_alone(cfg, tap_layers, abt_layers, design) or len(design) > 1


for _m in (CE(), GameLora(), Disagreement()):
    METHODS.add(_m.name, _m)
