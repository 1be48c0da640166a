"""Head coupling: weight coupling ω, gradient coupling ρ, interaction matrix G and Γ(G).

Everything here is pure tensor maths (docs/formulas.md#head-coupling). The only state is
:class:`GradientGram`, an explicit accumulator the caller owns; hooks that feed it live in
``headgame.models.tap``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "weight_coupling",
    "cosine_from_gram",
    "GradientGram",
    "interaction_matrix",
    "gamma",
    "gamma_fro",
    "gamma_rms",
    "gamma_abs",
    "poa_proxy",
]

# Norms below this (squared) count as zero; avoids the infinite gradient of sqrt at 0.
_TINY = 1e-30


def _work_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype (bf16, fp16, fp32) is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def cosine_from_gram(gram: Tensor) -> Tensor:
    """Turn the Gram matrix of unnormalised vectors into their cosine matrix.

    ``cos_ij = gram_ij / sqrt(gram_ii * gram_jj)``, clipped to [-1, 1] against rounding. The
    diagonal is exactly 1, also for a zero vector (a head that is all zeros is a unit "player"
    coupled to nothing): its off-diagonal entries are 0, because its Gram row is 0 and its norm
    is clamped to a tiny positive value instead of 0. Differentiable, dtype and device kept.

    Args:
        gram: [H, H] symmetric Gram matrix (``V Vᵀ`` of H vectors).

    Returns:
        [H, H] cosine matrix with unit diagonal.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square [H, H] matrix, got shape {tuple(gram.shape)}")
    n = gram.shape[0]
    norms = torch.diagonal(gram).clamp_min(_TINY).sqrt()  # [H]
    cos = gram / (norms[:, None] * norms[None, :])
    cos = cos.clamp(-1.0, 1.0)
    eye = torch.eye(n, dtype=torch.bool, device=gram.device)
    return torch.where(eye, torch.ones_like(cos), cos)


def weight_coupling(w_o: Tensor) -> Tensor:
    """Weight coupling ω: cosines of the heads' flattened output-projection slices.

    docs/formulas.md#omega: ω_ij = ⟨vec W_O^(i), vec W_O^(j)⟩ / (‖W_O^(i)‖_F ‖W_O^(j)‖_F).
    Differentiable (GAME-LoRA back-propagates the log-det barrier through ω into the LoRA
    factors of o_proj, docs/formulas.md#ldb). Computed in float32, or float64 if the input is float64.

    Args:
        w_o: [H, d, dh] per-head slices W_O^(i) (columns i·dh … (i+1)·dh−1 of o_proj.weight).

    Returns:
        [H, H] ω with unit diagonal.
    """
    if w_o.dim() != 3:
        raise ValueError(f"w_o must have shape [H, d, dh], got {tuple(w_o.shape)}")
    v = w_o.to(_work_dtype(w_o)).reshape(w_o.shape[0], -1)  # [H, d, dh] -> [H, d*dh]
    return cosine_from_gram(v @ v.T)


class GradientGram:
    """Streaming accumulator of the gradient Gram matrix behind ρ (docs/formulas.md#rho).

    Head i's gradient vector is vec g_i: the concatenation over all tokens n of its dh-vector
    g[n, i, :]. So ``Gram_ij = Σ_n Σ_d g[n,i,d] g[n,j,d]`` and ρ = cosine_from_gram(Gram). The
    Gram is additive over batches and processes, so no token is stored.

    Meant to run inside a backward hook on every layer: each :meth:`update` does one matmul in
    float32 (float64 inputs stay float64) and adds the small [H, H] result to a float64 buffer.
    bf16/fp16 inputs are up-cast to float32 first, because a Gram rounded to bf16 keeps only
    about 3 significant digits. The buffer follows the device of the first update.
    """

    def __init__(self, n_heads: int, head_dim: int, dtype: torch.dtype = torch.float64) -> None:
        """Args: n_heads H, head_dim dh, dtype of the accumulation buffer (float64 default)."""
        if n_heads < 1 or head_dim < 1:
            raise ValueError(f"n_heads and head_dim must be >= 1, got {n_heads}, {head_dim}")
        self.n_heads = int(n_heads)
        self.head_dim = int(head_dim)
        self.dtype = dtype
        self._gram = torch.zeros(self.n_heads, self.n_heads, dtype=dtype)  # [H, H]
        self.n_tokens = 0

    def update(self, g: Tensor) -> None:
        """Add the Gram of one batch of per-head gradients.

        Args:
            g: [N, H, dh] gradients with respect to the per-head outputs (the o_proj input),
                valid tokens only; any leading dims (e.g. [B, T, H, dh]) are flattened into N.
        """
        if g.dim() < 2 or tuple(g.shape[-2:]) != (self.n_heads, self.head_dim):
            raise ValueError(
                f"expected gradients [..., {self.n_heads}, {self.head_dim}], got {tuple(g.shape)}"
            )
        g = g.detach()
        x = g.reshape(-1, self.n_heads, self.head_dim).to(_work_dtype(g))  # [..., H, dh] -> [N, H, dh]
        if self._gram.device != x.device:
            self._gram = self._gram.to(x.device)
        # Gram_ij = Σ_n Σ_d x[n,i,d] x[n,j,d]: head i's vector is its dh-block of every token.
        # One explicit copy + matmul is ~5x faster than einsum("nid,njd->ij") on CPU.
        v = x.transpose(0, 1).reshape(self.n_heads, -1)  # [N, H, dh] -> [H, N, dh] -> [H, N*dh]
        batch_gram = v @ v.T  # [H, H]
        self._gram += batch_gram.to(self.dtype)
        self.n_tokens += int(x.shape[0])

    def gram(self) -> Tensor:
        """The accumulated [H, H] Gram matrix (a copy)."""
        return self._gram.clone()

    def rho(self) -> Tensor:
        """Gradient coupling ρ [H, H] (unit diagonal, in the buffer dtype, detached)."""
        if self.n_tokens == 0:
            raise ValueError("GradientGram.rho(): no gradients accumulated yet; call update() first")
        return cosine_from_gram(self._gram)

    def merge(self, other: "GradientGram") -> "GradientGram":
        """Add another accumulator's Gram and token count into this one (e.g. across processes)."""
        if (other.n_heads, other.head_dim) != (self.n_heads, self.head_dim):
            raise ValueError(
                f"cannot merge GradientGram of shape ({other.n_heads}, {other.head_dim}) into "
                f"({self.n_heads}, {self.head_dim})"
            )
        self._gram += other._gram.to(device=self._gram.device, dtype=self.dtype)
        self.n_tokens += other.n_tokens
        return self

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state: sizes, the Gram (on CPU) and the token count."""
        return {
            "n_heads": self.n_heads,
            "head_dim": self.head_dim,
            "gram": self._gram.detach().cpu().clone(),
            "n_tokens": self.n_tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; sizes must match."""
        if (int(state["n_heads"]), int(state["head_dim"])) != (self.n_heads, self.head_dim):
            raise ValueError(
                f"state is for ({state['n_heads']}, {state['head_dim']}) heads/dims, "
                f"this accumulator is ({self.n_heads}, {self.head_dim})"
            )
        self._gram = state["gram"].to(dtype=self.dtype).clone()
        self.n_tokens = int(state["n_tokens"])


def interaction_matrix(omega: Tensor, rho: Tensor) -> Tensor:
    """Head interaction matrix G = ω ⊙ ρ (docs/formulas.md#G).

    ρ is detached and moved to ω's dtype/device: it is a gradient statistic and treated as a
    constant (docs/formulas.md#rho), so gradients of G reach only ω. PSD with unit diagonal by the
    Schur product theorem.
    """
    if omega.shape != rho.shape:
        raise ValueError(f"omega {tuple(omega.shape)} and rho {tuple(rho.shape)} differ in shape")
    return omega * rho.detach().to(dtype=omega.dtype, device=omega.device)


def _as_numpy(g: Any) -> np.ndarray:
    if isinstance(g, Tensor):
        g = g.detach().to(torch.float64).cpu().numpy()
    a = np.asarray(g, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"G must be a square [H, H] matrix, got shape {a.shape}")
    return a


def gamma_fro(g: Any) -> float:
    """Γ(G) = ‖G − I‖_F, the primary interaction strength (docs/formulas.md#gamma). 0 for H = 1."""
    a = _as_numpy(g)
    if a.shape[0] < 2:
        return 0.0
    return float(np.linalg.norm(a - np.eye(a.shape[0])))


def gamma_rms(g: Any) -> float:
    """Γ_norm = Γ / sqrt(H(H−1)): RMS off-diagonal coupling (docs/formulas.md#gamma [D]). 0 for H = 1."""
    h = _as_numpy(g).shape[0]
    return 0.0 if h < 2 else gamma_fro(g) / math.sqrt(h * (h - 1))


def gamma_abs(g: Any) -> float:
    """Γ_abs = Σ_{i≠j} |G_ij| / (H(H−1)): mean absolute off-diagonal coupling (docs/formulas.md#gamma [D])."""
    a = _as_numpy(g)
    h = a.shape[0]
    if h < 2:
        return 0.0
    off = ~np.eye(h, dtype=bool)
    return float(np.abs(a[off]).sum() / (h * (h - 1)))


def gamma(g: Any) -> dict[str, float]:
    """All three Γ variants of docs/formulas.md#gamma as Python floats: ``gamma`` (primary), ``gamma_norm``,
    ``gamma_abs``. Accepts a torch tensor or numpy array [H, H]."""
    return {"gamma": gamma_fro(g), "gamma_norm": gamma_rms(g), "gamma_abs": gamma_abs(g)}


def poa_proxy(gamma_value: float, n_heads: int, c: float | None = None) -> dict[str, Any]:
    """A labelled proxy for the Price-of-Anarchy bound; the PoA constants are NOT estimated.

    docs/formulas.md#poa-proxy: PoA ≤ (1 + β_R + β_C) / (1 − (L/α)·Γ²). We report Γ² and
    1 / (1 − c·Γ²), i.e. the bound with β_R = β_C = 0 and the stated assumption L/α = c.
    The default c = 1/(H(H−1)) makes c·Γ² = Γ_norm² ∈ [0, 1]. ``proxy`` is ``inf`` when
    c·Γ² ≥ 1 (the bound is vacuous there).

    Returns:
        {"gamma_sq", "c", "proxy", "assumption"}.
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    if c is None:
        c = 1.0 / (n_heads * (n_heads - 1)) if n_heads >= 2 else 0.0
    gamma_sq = float(gamma_value) ** 2
    x = float(c) * gamma_sq
    proxy = float("inf") if x >= 1.0 else 1.0 / (1.0 - x)
    assumption = (
        f"Proxy only: assumes L/alpha = c = {float(c):.6g} and beta_R = beta_C = 0 in "
        "PoA <= (1 + beta_R + beta_C) / (1 - (L/alpha) * Gamma^2), constants not estimated."
    )
    return {"gamma_sq": gamma_sq, "c": float(c), "proxy": proxy, "assumption": assumption}
