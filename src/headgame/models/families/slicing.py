"""Tensor primitives of head surgery shared by the family modules (docs/formulas.md#surgery).

A projection's output (or input) is a run of blocks of ``head_dim`` rows; a head owns one or
more blocks. Surgery keeps the blocks of the kept heads as fresh dense tensors, so the pruned
GEMMs cost what their shape says.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class HeadGatherLinear(nn.Linear):
    """A projection whose output blocks of ``head_dim`` are handed out by index.

    Used where the kept query heads are unevenly spread over the KV groups: the matmul runs
    over the kept KV heads only; ``head_index[j]`` names the output block placed at position j
    (a gather, no FLOPs). For a K or V projection it names the KV head of kept query head j; for
    a fused QKV projection it lists the Q blocks and then each query head's K and V blocks.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, head_dim: int, head_index: list[int]) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        self.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
        self.head_dim = head_dim
        self.register_buffer("head_index", torch.tensor(head_index, dtype=torch.long, device=weight.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # [..., KV*dh]
        y = y.view(*y.shape[:-1], -1, self.head_dim)  # [..., KV, dh]
        return y.index_select(-2, self.head_index).flatten(-2)  # [..., Hq, dh] -> [..., Hq*dh]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", head_index={self.head_index.tolist()}"


def block_rows(blocks: Sequence[int], head_dim: int, offset: int = 0) -> torch.Tensor:
    """Row (or column) indices of whole blocks: block b covers [offset + b*dh, offset + (b+1)*dh)."""
    return torch.tensor([offset + b * head_dim + i for b in blocks for i in range(head_dim)], dtype=torch.long)


def interleaved_blocks(heads: Sequence[int]) -> list[int]:
    """dh-row blocks of a fused projection laid out per head as [q_h, k_h, v_h]."""
    return [3 * h + part for h in heads for part in range(3)]


def keep(param: torch.Tensor, idx: torch.Tensor, dim: int) -> nn.Parameter:
    # A fresh contiguous tensor: the pruned GEMMs then run on dense weights.
    return nn.Parameter(param.detach().index_select(dim, idx.to(param.device)).clone().contiguous(), requires_grad=param.requires_grad)


def slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    """Keep rows (dim 0, outputs) or columns (dim 1, inputs) of an ``nn.Linear`` in place."""
    lin.weight = keep(lin.weight, idx, dim)
    if dim == 0:
        if lin.bias is not None:
            lin.bias = keep(lin.bias, idx, 0)
        lin.out_features = lin.weight.shape[0]
    else:
        lin.in_features = lin.weight.shape[1]


def gather_linear(lin: nn.Linear, blocks: Sequence[int], head_dim: int, index: list[int]) -> HeadGatherLinear:
    """A :class:`HeadGatherLinear` projecting the ``blocks`` of ``lin`` and handing them out by ``index``."""
    rows = block_rows(blocks, head_dim)
    weight = keep(lin.weight, rows, 0)
    bias = None if lin.bias is None else keep(lin.bias, rows, 0)
    return HeadGatherLinear(weight, bias, head_dim, index)
