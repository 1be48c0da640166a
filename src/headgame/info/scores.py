"""Information-side head scores and the ε-Nash report (GT-FEP; docs/formulas.md). Pure.

All scores are per head of one layer, in bits, and large = important (prune the lowest):

* ``fep``: m_i^(≤3) = H_i − Σ_{j≠i} D({i,j}) − Σ_{j<k; j,k≠i} D({i,j,k}), the order-3 Harsanyi
  truncation of H(X_i | X_{N∖i}) (the primary score);
* ``fep-exact``: H(X_N) − H(X_{N∖i}) (saturates; reported, not the default ranking);
* ``shapley``: H_i − ½ Σ_j D({i,j}) − ⅓ Σ_{j<k} D({i,j,k});
* ``shapley-exact``: the Shapley value of v(S) = H(X_S) from the full 2^H table (all orders);
* ``gibbs``: the inclusion probability π_i under P_β(S) ∝ exp(−β F(S)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


def fep_order3(h1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor) -> torch.Tensor:
    """m_i^(≤3) from entropies H_i [H], pair dividends [H, H] and triple dividends [H, H, H]."""
    # d3[i] holds every (j, k) twice (j<k and k<j), and 0 where indices repeat
    return h1 - d2.sum(-1) - d3.sum((-1, -2)) / 2.0


def shapley_order3(h1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor) -> torch.Tensor:
    """φ_i = Σ_{S∋i} D_H(S)/|S| truncated at order 3."""
    return h1 - d2.sum(-1) / 2.0 - d3.sum((-1, -2)) / 2.0 / 3.0


def shapley_exact(table: torch.Tensor) -> torch.Tensor:
    """φ_i = Σ_{S⊆N∖i} |S|!(n−|S|−1)!/n! · (v(S∪i) − v(S)) [H] from ``table`` [2^H] (bit i = head i).

    One vector pass over the 2^(H−1) masks without bit i per head: O(H·2^H).
    """
    v = torch.as_tensor(table, dtype=torch.float64).reshape(-1)
    size = int(v.shape[0])
    n = size.bit_length() - 1
    if size < 1 or size != 1 << n:
        raise ValueError(f"a subset table has 2^H entries; got {size}")
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    masks = torch.arange(size, dtype=torch.int64)
    pop = torch.zeros(size, dtype=torch.int64)
    for i in range(n):
        pop += (masks >> i) & 1
    # |S|!(n−|S|−1)!/n! = 1 / (n·C(n−1, |S|)); the binomial form stays exact in float64
    weight = torch.tensor([1.0 / (n * math.comb(n - 1, k)) for k in range(n)], dtype=torch.float64)
    phi = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        out = masks[((masks >> i) & 1) == 0]
        phi[i] = (weight[pop[out]] * (v[out | (1 << i)] - v[out])).sum()
    return phi


def fep_exact(h_full: float, h_minus: torch.Tensor) -> torch.Tensor:
    """m_i = H(X_N) − H(X_{N∖i}) = H(X_i | X_{N∖i})."""
    return h_full - h_minus


@dataclass
class EpsilonNash:
    """ε-equilibrium of a pruned configuration: ε is the largest m_i among the pruned heads."""

    epsilon_bits: float  # max m_i over pruned heads
    mean_entropy_bits: float  # mean H_i over all heads
    epsilon_relative: float  # ε / mean H_i
    n_pruned: int
    spearman_rho: float | None = None  # score vs ablation ΔNLL over all heads
    spearman_p: float | None = None
    spearman_score: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def epsilon_nash(
    m: np.ndarray,
    pruned: Mapping[int, Sequence[int]],
    h1: np.ndarray,
) -> EpsilonNash:
    """ε = max_{i pruned} m_i (bits) and ε / mean_i H_i; ``m`` and ``h1`` are [L, H] arrays."""
    vals = [float(m[l, h]) for l, heads in pruned.items() for h in heads]
    eps = max(vals) if vals else 0.0
    mean_h = float(np.mean(h1))
    return EpsilonNash(eps, mean_h, eps / mean_h if mean_h > 0 else math.nan, len(vals))


def spearman(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    """Spearman correlation of two score arrays (flattened); None when undefined."""
    from scipy import stats

    x, y = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return None, None
    res = stats.spearmanr(x[ok], y[ok])
    return float(res.statistic), float(res.pvalue)
