"""Harsanyi dividends of the coalition free energy, and per-layer summaries.

The GT-FEP paper's dividends (docs/formulas.md). Pure functions on tensors of entropies (bits).

* Coalition free energy with a uniform prior over K symbols per head and deterministic
  dynamics: F(S) = |S|·log2 K − H(X_S) (§3.3).
* Dividends D_F(S) = Σ_{T⊆S} (−1)^{|S|−|T|} F(T): the Möbius transform of F over the subset
  lattice (§3.4), computed for all 2^H subsets at once by the fast transform (one vectorised
  subtraction per head, O(H·2^H)), never by a loop per subset. :func:`zeta` inverts it.
* Pairs: D({i,j}) = I(X_i; X_j) ≥ 0. Triples: D({i,j,k}) = I(X_i;X_j|X_k) − I(X_i;X_j),
  McGill's interaction information, synergy-positive: negative = redundancy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def _as_cube(f: torch.Tensor, n_heads: int) -> torch.Tensor:
    # [..., 2^H] -> [..., 2, ..., 2]; with C order the last axis is bit 0 of the flat index
    return f.reshape(*f.shape[:-1], *([2] * n_heads))


def _n_heads(size: int) -> int:
    n = size.bit_length() - 1
    if size != 1 << n:
        raise ValueError(f"a subset table has 2^H entries, got {size}; index subsets by bitmask")
    return n


def mobius(f: torch.Tensor) -> torch.Tensor:
    """Möbius transform over subsets: D(S) = Σ_{T⊆S} (−1)^{|S|−|T|} f(T), along the last axis.

    ``f`` [..., 2^H] is indexed by bitmask (bit i = head i); leading axes are batched (e.g.
    bootstrap resamples).
    """
    n = _n_heads(f.shape[-1])
    d = _as_cube(f.clone(), n)
    lead = f.dim() - 1
    for bit in range(n):
        axis = lead + n - 1 - bit
        d.narrow(axis, 1, 1).sub_(d.narrow(axis, 0, 1))  # D[S ∪ {i}] -= D[S] for S ∌ i
    return d.reshape(f.shape)


def zeta(d: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`mobius`: f(S) = Σ_{T⊆S} D(T)."""
    n = _n_heads(d.shape[-1])
    f = _as_cube(d.clone(), n)
    lead = d.dim() - 1
    for bit in range(n):
        axis = lead + n - 1 - bit
        f.narrow(axis, 1, 1).add_(f.narrow(axis, 0, 1))
    return f.reshape(d.shape)


def mask_sizes(n_heads: int) -> torch.Tensor:
    """|S| for every bitmask S of ``n_heads`` heads, [2^H]."""
    m = torch.arange(1 << n_heads)
    return sum(((m >> i) & 1) for i in range(n_heads)) if n_heads else torch.zeros(1, dtype=torch.long)


def free_energy_table(h_table: torch.Tensor, log2_k: float) -> torch.Tensor:
    """F(S) = |S|·log2 K − H(X_S) (docs/formulas.md) for every subset; ``h_table`` [..., 2^H]."""
    n = _n_heads(h_table.shape[-1])
    return mask_sizes(n).to(h_table.dtype) * log2_k - h_table


def dividends_table(h_table: torch.Tensor, log2_k: float) -> torch.Tensor:
    """Harsanyi dividends D_F(S) of every subset (docs/formulas.md); entry 0 is 0."""
    return mobius(free_energy_table(h_table, log2_k))


# --------------------------------------------------------------------------- orders ≤ 3


def pair_dividends(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """D({i,j}) = H_i + H_j − H_ij = I(X_i; X_j) for all pairs, [..., H, H] (diagonal 0)."""
    mi = h1.unsqueeze(-1) + h1.unsqueeze(-2) - h2
    return mi * (1 - torch.eye(h1.shape[-1], dtype=mi.dtype))


def triple_dividends(h1: torch.Tensor, h2: torch.Tensor, h3: torch.Tensor) -> torch.Tensor:
    """D({i,j,k}) = −(H_i+H_j+H_k) + (H_ij+H_ik+H_jk) − H_ijk, [..., H, H, H].

    Only entries with distinct i, j, k are meaningful; the rest are set to 0.
    """
    hi = h1[..., :, None, None]
    hj = h1[..., None, :, None]
    hk = h1[..., None, None, :]
    hij = h2[..., :, :, None]
    hik = h2[..., :, None, :]
    hjk = h2[..., None, :, :]
    d = -(hi + hj + hk) + (hij + hik + hjk) - h3
    n = h1.shape[-1]
    idx = torch.arange(n)
    distinct = (idx[:, None, None] != idx[None, :, None]) & (idx[:, None, None] != idx[None, None, :]) & (idx[None, :, None] != idx[None, None, :])
    return d * distinct.to(d.dtype)


def triu_pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def triu_triples(n: int) -> list[tuple[int, int, int]]:
    return [(i, j, k) for i in range(n) for j in range(i + 1, n) for k in range(j + 1, n)]


def pair_values(d2: torch.Tensor) -> torch.Tensor:
    """The i<j entries of [..., H, H] as [..., C(H,2)] in :func:`triu_pairs` order."""
    n = d2.shape[-1]
    i, j = torch.triu_indices(n, n, offset=1)
    return d2[..., i, j]


def triple_values(d3: torch.Tensor) -> torch.Tensor:
    """The i<j<k entries of [..., H, H, H] as [..., C(H,3)] in :func:`triu_triples` order."""
    trip = triu_triples(d3.shape[-1])
    if not trip:
        return d3.new_zeros(*d3.shape[:-3], 0)
    idx = torch.tensor(trip)
    return d3[..., idx[:, 0], idx[:, 1], idx[:, 2]]


# --------------------------------------------------------------------------- summaries


@dataclass
class TripleSummary:
    n: int
    mean: float
    median: float
    frac_negative: float
    min: float
    max: float
    wilcoxon_stat: float | None
    wilcoxon_p: float | None  # one-sided, H1: median < 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def summarise_triples(values: np.ndarray | torch.Tensor) -> TripleSummary:
    """Mean, median, fraction < 0 and the one-sided Wilcoxon signed-rank test (H1: median < 0).

    The triples of a layer share heads, so they are not independent: read the p-value as a
    descriptive statistic.
    """
    from scipy import stats

    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        return TripleSummary(0, math.nan, math.nan, math.nan, math.nan, math.nan, None, None)
    stat = p = None
    if np.any(v != 0):
        res = stats.wilcoxon(v, alternative="less", zero_method="wilcox")
        stat, p = float(res.statistic), float(res.pvalue)
    return TripleSummary(
        n=int(v.size), mean=float(v.mean()), median=float(np.median(v)), frac_negative=float((v < 0).mean()),
        min=float(v.min()), max=float(v.max()), wilcoxon_stat=stat, wilcoxon_p=p,
    )


def saturation_warnings(max_entropy_by_order: dict[int, float], n_obs: int, *, threshold: float = 0.9) -> list[str]:
    """Warnings for orders whose joint entropies approach log2(n), where plug-in estimates saturate (§3.2)."""
    if n_obs < 2:
        return [f"only {n_obs} observation(s): every entropy is 0 and every dividend is meaningless; raise --max-tokens"]
    cap = math.log2(n_obs)
    out = []
    for k in sorted(max_entropy_by_order):
        h = max_entropy_by_order[k]
        if h >= threshold * cap:
            out.append(
                f"{n_obs} observations are too few for the entropy of {k}-tuples of heads: the largest is "
                f"{h:.2f} bits, near the saturation level log2(n) = {cap:.2f} bits, so order-{k} dividends are biased; "
                "raise --max-tokens"
            )
    return out
