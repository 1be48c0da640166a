"""Differentiable pieces of the GAME-LoRA objective that act on per-head outputs.

* :func:`head_cross_correlation`: C_ij = (1/N) Õ_iᵀ Õ_j of z-scored head outputs (docs/formulas.md#cross-correlation),
  with every statistic (means, standard deviations, cross-correlations) optionally summed over
  processes by a differentiable all-reduce, so that k processes on a global batch give the same
  losses and gradients as one process on it.
* :class:`EMANormalizer`: L̂ = L·c/m_t (docs/formulas.md#ema), the [S] form by default, the ND-LoRA [A]
  form behind a flag.
* :func:`output_disagreement`: Li et al. (2018)'s output-disagreement term (docs/formulas.md#disagreement).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

SumReduce = Callable[[Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


def head_cross_correlation(o: Tensor, *, eps: float = 1e-8, all_reduce_sum: SumReduce | None = None) -> Tensor:
    """Cross-correlation of z-scored head outputs, [H, H, dh, dh] (docs/formulas.md#cross-correlation, Eq 30-33).

    Args:
        o: [N, H, dh] per-head outputs of the valid tokens of this process (differentiable).
        eps: added to σ (the reference's 1e-8); σ is the unbiased standard deviation.
        all_reduce_sum: differentiable sum over processes (``None`` = single process).
    """
    reduce = all_reduce_sum or _identity
    x = o.float()
    n_local = torch.tensor(float(x.shape[0]), device=x.device)
    n = reduce(n_local)
    mu = reduce(x.sum(dim=0)) / n  # [H, dh]
    centred = x - mu  # [N, H, dh]
    var = reduce((centred**2).sum(dim=0)) / (n - 1)  # unbiased, two-pass for accuracy
    z = centred / (var.sqrt() + eps)  # [N, H, dh]
    h, dh = z.shape[1], z.shape[2]
    flat = z.reshape(z.shape[0], h * dh)  # [N, H, dh] -> [N, H*dh]
    c = reduce(flat.T @ flat) / n  # [H*dh, H*dh]
    return c.reshape(h, dh, h, dh).permute(0, 2, 1, 3)  # -> [H, dh, H, dh] -> [H, H, dh, dh]


@dataclass
class EMANormalizer:
    """L̂_t = L_t · c / m_t with m_t = (1 − a)·m_{t−1} + a·L_t (detached), m_0 = c (docs/formulas.md#ema).

    ``mode="nd-lora"`` is the authors' earlier variant [A]: m starts at the first observed value,
    is updated only while ``warmup`` is true, and is frozen afterwards.
    """

    target: float = 20.0
    rate: float = 0.1
    mode: str = "s"
    m: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("s", "nd-lora"):
            raise ValueError(f"EMA mode must be 's' or 'nd-lora', got {self.mode!r}")
        if self.m is None and self.mode == "s":
            self.m = self.target

    def __call__(self, loss: Tensor, *, update: bool = True, warmup: bool = True) -> Tensor:
        value = float(loss.detach())
        if self.mode == "s":
            if update:
                self.m = (1.0 - self.rate) * float(self.m) + self.rate * value
        else:
            if self.m is None:
                self.m = value
            elif update and warmup:
                self.m = (1.0 - self.rate) * self.m + self.rate * value
        return loss * (self.target / max(float(self.m), 1e-12))

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rate": self.rate, "mode": self.mode, "m": self.m}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target, self.rate, self.mode, self.m = state["target"], state["rate"], state["mode"], state["m"]


def output_disagreement(o: Tensor, *, all_reduce_sum: SumReduce | None = None) -> Tensor:
    """Li et al. 2018, output variant: D = −(1/H²) Σ_{i,j} mean_n cos(o_i[n], o_j[n]).

    Returns the *negative* disagreement −D = mean cosine, i.e. the term to add to the loss
    (minimising it maximises disagreement). ``o`` is [N, H, dh].
    """
    reduce = all_reduce_sum or _identity
    unit = torch.nn.functional.normalize(o.float(), dim=-1)  # [N, H, dh]
    s = unit.sum(dim=1)  # Σ_i unit_i: Σ_{i,j} cos = ‖Σ_i unit_i‖²   [N, dh]
    per_token = (s * s).sum(dim=-1) / o.shape[1] ** 2  # [N]
    n = reduce(torch.tensor(float(o.shape[0]), device=o.device))
    return reduce(per_token.sum()) / n
