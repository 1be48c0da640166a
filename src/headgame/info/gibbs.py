"""Gibbs distributions over coalitions of heads (the GT-FEP paper's P_β over coalition structures). Pure, seeded.

* Subset level: P_β(S) ∝ exp(−β F(S)) over all 2^H subsets and each head's inclusion
  probability π_i = Σ_{S∋i} P_β(S) (the ``gibbs`` head score).
* Coalition structures: a partition π of the layer's heads has energy E(π) = Σ_{C∈π} F(C);
  P_β(π) ∝ exp(−β E(π)). Metropolis–Hastings moves one head to another block or to a new block
  (with the Hastings correction for the uneven number of targets); the chain reports the
  co-membership matrix P(i and j in one coalition) and the lowest-energy structure it visited.

Note: F(S) = |S|·log2 K − H(S) makes Σ_C |C|·log2 K the same for every partition, so E(π)
differs between partitions only by −Σ_C H(C); merging two blocks costs their mutual
information. The MAP structure is therefore the finest partition, and co-membership reveals
which heads are redundant enough to be merged at inverse temperature β.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def subset_gibbs(f_table: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """P_β(S) ∝ exp(−β F(S)) over all subsets (bitmask-indexed), computed stably."""
    logits = -beta * f_table.to(torch.float64)
    return torch.softmax(logits, dim=-1)


def inclusion_probabilities(p_subsets: torch.Tensor) -> torch.Tensor:
    """π_i = Σ_{S∋i} P(S) for every head, [H]."""
    size = p_subsets.shape[-1]
    n = size.bit_length() - 1
    masks = torch.arange(size)
    return torch.stack([p_subsets[..., (masks >> i) & 1 == 1].sum(-1) for i in range(n)], dim=-1)


@dataclass
class PartitionChain:
    """Result of :func:`mcmc_partitions`."""

    co_membership: np.ndarray  # [H, H], P(i and j share a coalition) after burn-in
    map_labels: list[int]  # lowest-energy partition visited, blocks numbered in order of first head
    map_energy: float
    mean_energy: float
    mean_blocks: float
    acceptance: float
    steps: int
    burn_in: int
    beta: float

    def to_dict(self) -> dict:
        return {
            "co_membership": self.co_membership.tolist(), "map_labels": self.map_labels,
            "map_energy": self.map_energy, "mean_energy": self.mean_energy, "mean_blocks": self.mean_blocks,
            "acceptance": self.acceptance, "steps": self.steps, "burn_in": self.burn_in, "beta": self.beta,
        }


def _canonical(labels: np.ndarray) -> list[int]:
    seen: dict[int, int] = {}
    return [seen.setdefault(int(l), len(seen)) for l in labels]


def partition_energy(labels: np.ndarray | list[int], f_table: np.ndarray) -> float:
    """E(π) = Σ_{C∈π} F(C) for block labels per head."""
    blocks: dict[int, int] = {}
    for head, lab in enumerate(labels):
        blocks[int(lab)] = blocks.get(int(lab), 0) | (1 << head)
    return float(sum(f_table[m] for m in blocks.values()))


def mcmc_partitions(
    f_table: torch.Tensor | np.ndarray,
    *,
    beta: float = 1.0,
    steps: int = 20_000,
    burn_in: int = 2_000,
    seed: int = 0,
) -> PartitionChain:
    """Metropolis–Hastings over coalition structures of the H heads of one layer."""
    f = np.asarray(f_table, dtype=np.float64)
    n = int(f.shape[0]).bit_length() - 1
    if burn_in >= steps:
        raise ValueError(f"burn_in ({burn_in}) must be smaller than steps ({steps})")
    rng = np.random.default_rng(seed)
    labels = np.arange(n)  # start from singletons
    block_mask = {i: 1 << i for i in range(n)}
    energy = float(sum(f[m] for m in block_mask.values()))
    best_energy, best = energy, labels.copy()
    co = np.zeros((n, n))
    energies, n_blocks, accepted, kept = 0.0, 0.0, 0, 0

    for step in range(steps):
        if n > 1:
            i = int(rng.integers(n))
            src = int(labels[i])
            others = [b for b in block_mask if b != src]
            alone = block_mask[src] == 1 << i
            choices = others + ([] if alone else [-1])
            dst = choices[int(rng.integers(len(choices)))]
            q_fwd = 1.0 / len(choices)
            src_new = block_mask[src] & ~(1 << i)
            if dst == -1:
                dst_label = max(block_mask) + 1
                dst_old, dst_new = 0, 1 << i
            else:
                dst_label = dst
                dst_old, dst_new = block_mask[dst], block_mask[dst] | 1 << i
            delta = (f[src_new] if src_new else 0.0) - f[block_mask[src]] + f[dst_new] - (f[dst_old] if dst_old else 0.0)
            # reverse move: i goes back to src (or to a new block when src vanished)
            n_blocks_after = len(block_mask) + (1 if dst == -1 else 0) - (1 if not src_new else 0)
            alone_after = dst_new == 1 << i
            q_rev = 1.0 / (n_blocks_after - 1 + (0 if alone_after else 1))
            log_acc = -beta * delta + math.log(q_rev / q_fwd)
            if log_acc >= 0 or rng.random() < math.exp(log_acc):
                if src_new:
                    block_mask[src] = src_new
                else:
                    del block_mask[src]
                block_mask[dst_label] = dst_new
                labels[i] = dst_label
                energy += delta
                accepted += 1
                if energy < best_energy - 1e-12:
                    best_energy, best = energy, labels.copy()
        if step >= burn_in:
            co += labels[:, None] == labels[None, :]
            energies += energy
            n_blocks += len(block_mask)
            kept += 1
    return PartitionChain(
        co_membership=co / max(kept, 1), map_labels=_canonical(best), map_energy=best_energy,
        mean_energy=float(energies / max(kept, 1)), mean_blocks=n_blocks / max(kept, 1),
        acceptance=accepted / steps, steps=steps, burn_in=burn_in, beta=beta,
    )
