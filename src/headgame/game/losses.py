"""GAME-LoRA regularisers on the head interaction matrix G and head cross-correlations.

Pure, differentiable functions (docs/formulas.md#training-objective). The training loop combines them with the
λ schedule and the EMA normaliser; analysis uses them to report the loss values of a model.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PairWeighting", "log_det_barrier", "abt_pair_weights", "abt_loss"]


class PairWeighting(str, Enum):
    """How Barlow-Twins head pairs are weighted (docs/formulas.md#pair-weights, ablations §8)."""

    ADAPTIVE = "adaptive"
    """w_ij = α + (1−α)·softplus(−β(G_ij − τ)): coupled pairs taxed slightly less (default)."""
    UNIFORM = "uniform"
    """w_ij ≡ 1 (ablation "Uniform weighting")."""
    INVERSE = "inverse"
    """w_ij = α + (1−α)·softplus(+β(G_ij − τ)): coupled pairs taxed more (ablation)."""


def log_det_barrier(g: Tensor, eps: float = 0.01, jitter: float = 0.0) -> Tensor:
    """Log-determinant barrier L_LDB = −log det(G + εI) (docs/formulas.md#ldb, Eq 28).

    Computed as −Σ_k log(max(λ_k, ε)) with λ = eigvalsh(G + εI), in float32 (float64 inputs
    stay float64). Minimised by G = I, where it equals −H·log(1 + ε). Differentiable through
    ``eigvalsh`` (fine for distinct eigenvalues); ``jitter`` adds jitter·I, the spec's remedy
    (1e-6) if NaNs appear in the backward pass.

    Args:
        g: [H, H] interaction matrix (symmetric; symmetrised here against rounding).
        eps: ε, both the ridge and the eigenvalue floor.
        jitter: extra diagonal jitter, 0 by default.

    Returns:
        Scalar tensor.
    """
    if g.dim() != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"G must be a square [H, H] matrix, got shape {tuple(g.shape)}")
    work = g.to(torch.float64 if g.dtype == torch.float64 else torch.float32)
    work = 0.5 * (work + work.T)
    eye = torch.eye(work.shape[0], dtype=work.dtype, device=work.device)
    lam = torch.linalg.eigvalsh(work + (eps + jitter) * eye)  # [H]
    # docs/formulas.md#ldb: eigenvalues clamped below at ε (only active if G is not numerically PSD).
    return -torch.log(lam.clamp_min(eps)).sum()


def abt_pair_weights(
    g: Tensor,
    alpha: float = 0.929,
    beta: float = 15.99,
    tau: float = 0.0,
    mode: PairWeighting | str = PairWeighting.ADAPTIVE,
) -> Tensor:
    """Pair weights w_ij for the adaptive Barlow-Twins loss (docs/formulas.md#pair-weights).

    From a DETACHED G (docs/formulas.md#pair-weights [D]): no gradient flows through the weights.
    Sanity values (adaptive, defaults): G_ij = 0 → 0.978, +0.3 → 0.930, −0.3 → 1.270.

    Args:
        g: [H, H] interaction matrix.
        alpha, beta, tau: floor α, sharpness β and threshold τ.
        mode: "adaptive", "uniform" or "inverse" (see :class:`PairWeighting`).

    Returns:
        [H, H] weights, diagonal included (callers use only i < j).
    """
    mode = PairWeighting(mode)
    g = g.detach()
    if mode is PairWeighting.UNIFORM:
        return torch.ones_like(g)
    sign = -1.0 if mode is PairWeighting.ADAPTIVE else 1.0
    return alpha + (1.0 - alpha) * F.softplus(sign * beta * (g - tau))


def abt_loss(c: Tensor, weights: Tensor | None = None, subtract_identity: bool = True) -> Tensor:
    """Barlow-Twins loss between heads: L_ABT = E_{i<j}[ w_ij ‖C_ij − I‖_F² ] (docs/formulas.md#pair-weights, Eq 33).

    With ``subtract_identity=False`` the target is 0 (ablation "Zero target", docs/formulas.md#ablations).
    Differentiable in ``c``; the weights are used as given (detach them upstream).

    Args:
        c: [H, H, dh, dh] cross-correlations C_ij.
        weights: [H, H] pair weights, or None for w ≡ 1.

    Returns:
        Scalar tensor; 0 when H < 2 (no pairs).
    """
    if c.dim() != 4 or c.shape[0] != c.shape[1] or c.shape[2] != c.shape[3]:
        raise ValueError(f"C must have shape [H, H, dh, dh], got {tuple(c.shape)}")
    h, dh = c.shape[0], c.shape[2]
    if h < 2:
        return c.sum() * 0.0
    target = torch.eye(dh, dtype=c.dtype, device=c.device) if subtract_identity else 0.0
    per_pair = ((c - target) ** 2).sum(dim=(-2, -1))  # [H, H, dh, dh] -> [H, H]
    if weights is not None:
        per_pair = per_pair * weights.to(dtype=per_pair.dtype, device=per_pair.device)
    iu = torch.triu_indices(h, h, offset=1, device=c.device)  # [2, H(H−1)/2]
    return per_pair[iu[0], iu[1]].mean()
