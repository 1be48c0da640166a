"""Head redundancy: streaming z-scored cross-correlations between heads (docs/formulas.md#redundancy).

:class:`OutputMoments` accumulates the first and second moments of per-head outputs over many
batches; :func:`cross_correlation` turns them into exactly the C_ij the spec defines on all N
tokens at once; :func:`redundancy_stats` summarises them per head pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from headgame.game.losses import abt_loss, abt_pair_weights

__all__ = ["OutputMoments", "cross_correlation", "redundancy_stats"]


class OutputMoments:
    """Streaming mean and centred second moment of per-head outputs (one layer).

    Keeps n, the mean μ [H·dh] and M2 = Σ_n (o_n − μ)(o_n − μ)ᵀ [H·dh, H·dh] in float64. This
    holds the same information as Σo and Σooᵀ (Σooᵀ = M2 + n·μμᵀ) but avoids the catastrophic
    cancellation of "E[ooᵀ] − μμᵀ" when head outputs have a large mean. Each update shifts the
    batch by a provisional centre, does one float32 matmul (float64 inputs stay float64) and
    merges with Chan's parallel formula in float64.
    """

    def __init__(self, n_heads: int, head_dim: int) -> None:
        """Args: n_heads H and head_dim dh of the layer."""
        if n_heads < 1 or head_dim < 1:
            raise ValueError(f"n_heads and head_dim must be >= 1, got {n_heads}, {head_dim}")
        self.n_heads = int(n_heads)
        self.head_dim = int(head_dim)
        dim = self.n_heads * self.head_dim
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)  # [H*dh]
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64)  # [H*dh, H*dh]

    def _combine(self, n_b: int, mean_b: Tensor, m2_b: Tensor) -> None:
        """Chan et al. parallel update of (n, mean, M2) with a batch's (n_b, mean_b, M2_b)."""
        if n_b == 0:
            return
        if self.mean.device != mean_b.device:
            self.mean, self.m2 = self.mean.to(mean_b.device), self.m2.to(mean_b.device)
        n_a, n = self.n, self.n + n_b
        delta = mean_b - self.mean  # [H*dh]
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.n = n

    def update(self, o: Tensor) -> None:
        """Add a batch of per-head outputs.

        Args:
            o: [N, H, dh] per-head outputs of valid (non-pad) tokens, selected by the caller;
                any leading dims are flattened into N.
        """
        if o.dim() < 2 or tuple(o.shape[-2:]) != (self.n_heads, self.head_dim):
            raise ValueError(
                f"expected outputs [..., {self.n_heads}, {self.head_dim}], got {tuple(o.shape)}"
            )
        o = o.detach()
        work = torch.float64 if o.dtype == torch.float64 else torch.float32
        x = o.reshape(-1, self.n_heads * self.head_dim).to(work)  # [..., H, dh] -> [N, H*dh]
        n_b = int(x.shape[0])
        if n_b == 0:
            return
        centre = x.mean(dim=0)  # provisional shift; the float64 correction below absorbs its error
        y = x - centre  # [N, H*dh]
        s = y.sum(dim=0).to(torch.float64)  # [H*dh]
        sq = (y.T @ y).to(torch.float64)  # [H*dh, H*dh]
        mean_b = centre.to(torch.float64) + s / n_b
        m2_b = sq - torch.outer(s, s) / n_b  # shifted-data formula, exact in exact arithmetic
        self._combine(n_b, mean_b, m2_b)

    def merge(self, other: "OutputMoments") -> "OutputMoments":
        """Fold another accumulator (e.g. from another process) into this one."""
        if (other.n_heads, other.head_dim) != (self.n_heads, self.head_dim):
            raise ValueError(
                f"cannot merge OutputMoments of shape ({other.n_heads}, {other.head_dim}) into "
                f"({self.n_heads}, {self.head_dim})"
            )
        dev = self.mean.device
        self._combine(other.n, other.mean.to(dev), other.m2.to(dev))
        return self

    def sum(self) -> Tensor:
        """Σ_n o_n [H*dh] in float64."""
        return self.mean * self.n

    def sum_outer(self) -> Tensor:
        """Σ_n o_n o_nᵀ [H*dh, H*dh] in float64."""
        return self.m2 + torch.outer(self.mean, self.mean) * self.n

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state (tensors on CPU)."""
        return {
            "n_heads": self.n_heads,
            "head_dim": self.head_dim,
            "n": self.n,
            "mean": self.mean.detach().cpu().clone(),
            "m2": self.m2.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; sizes must match."""
        if (int(state["n_heads"]), int(state["head_dim"])) != (self.n_heads, self.head_dim):
            raise ValueError(
                f"state is for ({state['n_heads']}, {state['head_dim']}) heads/dims, "
                f"this accumulator is ({self.n_heads}, {self.head_dim})"
            )
        self.n = int(state["n"])
        self.mean = state["mean"].to(torch.float64).clone()
        self.m2 = state["m2"].to(torch.float64).clone()


def cross_correlation(
    moments: OutputMoments, eps: float = 1e-8, unbiased_std: bool = True
) -> Tensor:
    """Head cross-correlations C_ij = (1/N) Õ_iᵀ Õ_j from streamed moments (docs/formulas.md#redundancy, Eq 30–33).

    Identical to z-scoring all N tokens at once, õ = (o − μ) / (σ + eps), with σ the unbiased
    std (as [S]) unless ``unbiased_std=False``, then C = (1/N) ÕᵀÕ. From the moments:
    C = (M2 / N) / ((σ + eps)(σ + eps)ᵀ). Hence the diagonal of C_ii is
    ((N−1)/N) · σ² / (σ + eps)² ≈ (N−1)/N with the unbiased std (exactly 1 − O(eps/σ) when
    biased).

    Returns:
        [H, H, dh, dh] float64 tensor; C[i, j] is the dh×dh block between heads i and j.
    """
    n = moments.n
    if n < 2:
        raise ValueError(f"cross_correlation needs at least 2 tokens, got {n}")
    h, dh = moments.n_heads, moments.head_dim
    cov = moments.m2 / n  # [H*dh, H*dh], the 1/N of Eq 33
    var = torch.diagonal(moments.m2) / (n - 1 if unbiased_std else n)  # [H*dh]
    scale = var.clamp_min(0.0).sqrt() + eps  # [H*dh]
    c = cov / (scale[:, None] * scale[None, :])  # [H*dh, H*dh]
    # [H*dh, H*dh] -> [H, dh, H, dh] -> [H, H, dh, dh]
    return c.reshape(h, dh, h, dh).permute(0, 2, 1, 3).contiguous()


def _upper_mean(m: np.ndarray) -> float:
    """Mean over the pairs i < j of an [H, H] matrix; 0 when there are no pairs."""
    iu = np.triu_indices(m.shape[0], k=1)
    return float(m[iu].mean()) if iu[0].size else 0.0


def redundancy_stats(c: Tensor, g: Tensor | None = None) -> dict[str, Any]:
    """Per-pair redundancy summaries of the head cross-correlations (docs/formulas.md#redundancy).

    Matrices are float64 numpy [H, H]; scalars are Python floats.

    * ``bt_identity``: ‖C_ij − I‖_F², the Barlow-Twins term with identity target; diagonal 0.
    * ``bt_zero``: ‖C_ij‖_F², the zero-target ablation term; diagonal 0 (not a pair).
    * ``aligned_corr``: mean_k C_ij[k, k], the correlation of feature k of head i with feature k
      of head j, averaged over k (diagonal kept: (N−1)/N by construction).
    * ``mean_abs_corr``: mean of |C_ij| over all dh² entries (diagonal kept).
    * ``l_abt_uniform``: mean over i < j of bt_identity (L_ABT with w ≡ 1).
    * ``l_abt_adaptive``: mean over i < j of w_ij·bt_identity, w from
      :func:`abt_pair_weights` (G) — L_ABT of spec Eq 33 before EMA normalisation; None
      when G is not given.
    * ``l_abt_zero``: mean over i < j of bt_zero.
    * ``redundancy_index``: mean over i < j of mean_abs_corr, a scalar summary of how much
      heads duplicate each other in any feature pairing.

    Args:
        c: [H, H, dh, dh] from :func:`cross_correlation`.
        g: optional [H, H] interaction matrix for the adaptive weights.
    """
    if c.dim() != 4 or c.shape[0] != c.shape[1] or c.shape[2] != c.shape[3]:
        raise ValueError(f"C must have shape [H, H, dh, dh], got {tuple(c.shape)}")
    c = c.detach().to(torch.float64).cpu()
    h, dh = c.shape[0], c.shape[2]
    eye_dh = torch.eye(dh, dtype=torch.float64)
    off = ~np.eye(h, dtype=bool)
    bt_identity = ((c - eye_dh) ** 2).sum(dim=(-2, -1)).numpy() * off  # [H, H]
    bt_zero = (c**2).sum(dim=(-2, -1)).numpy() * off  # [H, H]
    aligned = torch.diagonal(c, dim1=-2, dim2=-1).mean(dim=-1).numpy()  # [H, H, dh] -> [H, H]
    mean_abs = c.abs().mean(dim=(-2, -1)).numpy()  # [H, H]
    l_adaptive = None
    if g is not None:
        w = abt_pair_weights(g).to(torch.float64).cpu()
        l_adaptive = float(abt_loss(c, w))
    return {
        "bt_identity": bt_identity,
        "bt_zero": bt_zero,
        "aligned_corr": aligned,
        "mean_abs_corr": mean_abs,
        "l_abt_uniform": _upper_mean(bt_identity),
        "l_abt_adaptive": l_adaptive,
        "l_abt_zero": _upper_mean(bt_zero),
        "redundancy_index": _upper_mean(mean_abs),
    }
