"""Discretised head outputs: each head's argmax key index per query position (the GT-FEP
paper's discretisation).

The forward passes run through :class:`~headgame.models.tap.HeadTap` (``argmax=True``), which
switches to eager attention and reduces every layer's attention map to its argmax inside the
layer's hook, so one layer's map is alive at a time and never all layers' at once. Sequences
are processed in chunks of ``batch_size``; only the base model runs (no LM head). Padded query
positions are dropped.

Alphabets:
* ``absolute``: X = k, the key position (the paper's argmax key index); K = T_max.
* ``relative``: X = q − k, the offset back from the query; K = T_max for causal models, and
  2·T_max − 1 for bidirectional ones (offsets shifted to be non-negative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from headgame.errors import HeadgameError
from headgame.models.device import to_model
from headgame.models.layout import HeadLayout
from headgame.models.tap import HeadTap

ALPHABETS = ("absolute", "relative")


@dataclass
class HeadSymbols:
    """Observations of one run: for every tapped layer, [N, H] symbols at the same N positions."""

    layers: list[int]
    x: dict[int, torch.Tensor]  # layer -> [N, H] int64 symbols
    seq: torch.Tensor  # [N] sequence index of each observation
    pos: torch.Tensor  # [N] query position
    alphabet: str
    alphabet_size: int  # K, for the modular term |S|·log2 K of F (docs/formulas.md)
    n_sequences: int

    @property
    def n_obs(self) -> int:
        return int(self.seq.shape[0])


def _base(model: nn.Module) -> nn.Module:
    # the transformer without its LM head: attention maps are all we need
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


@torch.no_grad()
def collect_symbols(
    model: nn.Module,
    layout: HeadLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    layers: list[int] | None = None,
    alphabet: str = "absolute",
    batch_size: int = 4,
    on_batch: Callable[[int, int], None] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> HeadSymbols:
    """Argmax key symbols of ``layers`` (default all) for the sequences ``input_ids`` [N_seq, T].

    ``on_batch(done_sequences, total_sequences)`` is called after each chunk (progress bars).
    ``start``/``stop`` restrict the run to the sequences ``start:stop`` (sequence indices stay
    those of ``input_ids``, the alphabet that of its full width), so that parts collected from
    multiples of ``batch_size`` and joined by :func:`concat_symbols` equal one whole run.
    """
    if alphabet not in ALPHABETS:
        raise HeadgameError(f"unknown alphabet '{alphabet}'; use absolute or relative")
    if batch_size < 1:
        raise HeadgameError(f"--batch-size {batch_size} must be at least 1; pass a positive size")
    layers = list(range(layout.n_layers)) if layers is None else sorted(layers)
    n_seq, t_max = input_ids.shape
    xs: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    seqs, poss = [], []
    base = _base(model)
    stop = n_seq if stop is None else min(stop, n_seq)
    with HeadTap(model, layout, layers, argmax=True) as tap:
        for b0 in range(start, stop, batch_size):
            mask = attention_mask[b0 : min(b0 + batch_size, stop)]  # [B, T]
            width = max(int(mask.sum(1).max()), 1)  # right padding: trailing all-pad columns can go
            ids, mask = input_ids[b0 : b0 + mask.shape[0], :width], mask[:, :width]  # [B, T']
            tap.clear()
            tap.set_mask(mask)
            dev_ids, dev_mask = to_model(base, ids, mask)  # the batch is cut on the CPU
            base(input_ids=dev_ids, attention_mask=dev_mask)
            valid = mask.bool()  # [B, T]
            b_idx, q_idx = valid.nonzero(as_tuple=True)  # [n_b]
            seqs.append(b_idx + b0)
            poss.append(q_idx)
            for l in layers:
                k = tap.argmax[l].to("cpu", torch.int64)  # [B, T, H], -1 at padding; symbols live on the CPU
                k = k[valid]  # [n_b, H]
                if alphabet == "relative":
                    k = q_idx.unsqueeze(-1) - k  # offset back from the query
                    if not layout.causal:
                        k = k + (t_max - 1)
                xs[l].append(k)
            if on_batch is not None:
                on_batch(min(b0 + batch_size, stop), n_seq)
    x = {l: torch.cat(v) for l, v in xs.items()}
    for l, v in x.items():
        if v.numel() and int(v.min()) < 0:
            raise HeadgameError(f"layer {l} produced a negative argmax symbol; check the attention mask of the data")
    size = t_max if (alphabet == "absolute" or layout.causal) else 2 * t_max - 1
    return HeadSymbols(layers, x, torch.cat(seqs), torch.cat(poss), alphabet, int(size), int(stop - start))


def concat_symbols(parts: list[HeadSymbols]) -> HeadSymbols:
    """One :class:`HeadSymbols` from parts collected in order over consecutive sequence ranges."""
    first = parts[0]
    x = {l: torch.cat([p.x[l] for p in parts]) for l in first.layers}
    return HeadSymbols(first.layers, x, torch.cat([p.seq for p in parts]), torch.cat([p.pos for p in parts]), first.alphabet,
                       first.alphabet_size, sum(p.n_sequences for p in parts))
