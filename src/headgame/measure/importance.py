"""Performance- and attention-based head importances (the baselines of the GT-FEP score).

Shared by ``headgame fep`` (the ablation ΔNLL behind its Spearman check) and ``headgame prune``
(criteria ablation, michel, attention-entropy). Every hook is a :class:`HeadTap`'s.

* :func:`ablation_delta_nll`: the increase in mean token NLL when head i alone is gated off
  (HeadTap gates; one forward per head).
* :func:`michel_importance`: Michel et al. (2019) head importance, E|∂L/∂g_i| through HeadTap
  gates g = 1, each layer's scores divided by their L2 norm (their normalisation).
* :func:`attention_entropy`: mean per-row attention entropy (bits) of each head, over the
  non-pad query rows (HeadTap's attention maps, one layer at a time).

All return [L, H] float arrays. Losses: next-token cross-entropy for causal models; for BERT a
15 % masked-LM loss with one fixed masking (the same tokens are masked in every forward, so
ΔNLL compares like with like), through the MLM head or the tied-embedding proxy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from headgame.data.texts import Sequences, sequence_batches
from headgame.errors import HeadgameError
from headgame.models.device import to_model
from headgame.models.layout import HeadLayout
from headgame.models.objective import causal_lm_loss, masked_lm_loss
from headgame.models.tap import HeadTap, activation_gradients

Progress = Callable[[int, int], None]


def lm_loss(model: nn.Module, layout: HeadLayout, tokenizer, ids: torch.Tensor, mask: torch.Tensor, *, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Summed LM loss over the predicted tokens of one batch, and their number."""
    if layout.causal:
        out = causal_lm_loss(model, ids, mask)
    else:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise HeadgameError("the tokenizer has no [MASK] token, needed for the masked-LM loss; use a BERT-family tokenizer")
        out = masked_lm_loss(model, ids, mask, mask_token_id=mask_id, special_ids=special,
                             generator=torch.Generator().manual_seed(seed))
    return out.loss, out.n_targets


@torch.no_grad()
def mean_nll(model, layout, tokenizer, seqs: Sequences, batch_size: int, *, seed: int = 0) -> float:
    total, n = 0.0, 0
    for b, (ids, mask) in enumerate(sequence_batches(seqs, batch_size)):
        loss, k = lm_loss(model, layout, tokenizer, ids, mask, seed=seed + b)
        total += float(loss)
        n += k
    return total / max(n, 1)


def ablation_delta_nll(model, layout: HeadLayout, tokenizer, seqs: Sequences, *, batch_size: int = 4, seed: int = 0,
                       on_step: Progress | None = None, done: tuple[np.ndarray, float, int] | None = None,
                       on_layer: Callable[[np.ndarray, float, int], None] | None = None,
                       heads: range | None = None) -> tuple[np.ndarray, float]:
    """ΔNLL (nats/token) of gating off each head alone, [L, H]; and the unablated NLL.

    ``on_layer(delta, base, layers_done)`` is called after each layer (checkpoints); ``done``,
    such a triple, continues from it (every head's forward is independent of the others').
    ``heads``: only these flat indices l·H + h are ablated (one process's share), the rest stay 0.
    """
    gates = {l: torch.ones(layout.n_heads) for l in range(layout.n_layers)}
    out = np.zeros((layout.n_layers, layout.n_heads)) if done is None else np.array(done[0], dtype=np.float64)
    total = layout.n_layers * layout.n_heads
    with HeadTap(model, layout, gates=gates):  # the hooks read the gate tensors we edit in place
        base = mean_nll(model, layout, tokenizer, seqs, batch_size, seed=seed) if done is None else done[1]
        for l in range(0 if done is None else done[2], layout.n_layers):
            for h in range(layout.n_heads):
                if heads is not None and l * layout.n_heads + h not in heads:
                    continue
                gates[l][h] = 0.0
                out[l, h] = mean_nll(model, layout, tokenizer, seqs, batch_size, seed=seed) - base
                gates[l][h] = 1.0
                if on_step is not None:
                    on_step(l * layout.n_heads + h + 1, total)
            if on_layer is not None:
                on_layer(out, base, l + 1)
    return out, base


def michel_importance(model, layout: HeadLayout, tokenizer, seqs: Sequences, *, batch_size: int = 4, seed: int = 0,
                      normalise: bool = True, on_step: Progress | None = None) -> np.ndarray:
    """E_batches |∂L/∂g_i| with gates g = 1 (Michel et al. 2019), per-layer L2-normalised, [L, H]."""
    gates = {l: torch.ones(layout.n_heads, requires_grad=True) for l in range(layout.n_layers)}
    acc = np.zeros((layout.n_layers, layout.n_heads))
    n_batches = math.ceil(seqs.n_sequences / batch_size)
    with activation_gradients(model), HeadTap(model, layout, gates=gates), torch.enable_grad():
        for b, (ids, mask) in enumerate(sequence_batches(seqs, batch_size)):
            loss, n = lm_loss(model, layout, tokenizer, ids, mask, seed=seed + b)
            (loss / max(n, 1)).backward()
            for l, g in gates.items():
                acc[l] += g.grad.detach().abs().numpy()
                g.grad = None
            if on_step is not None:
                on_step(b + 1, n_batches)
    acc /= max(n_batches, 1)
    if normalise:
        norms = np.linalg.norm(acc, axis=1, keepdims=True)
        acc = acc / np.where(norms > 0, norms, 1.0)
    return acc


@torch.no_grad()
def attention_entropy(model, layout: HeadLayout, seqs: Sequences, *, batch_size: int = 2, on_step: Progress | None = None) -> np.ndarray:
    """Mean per-row attention entropy in bits of each head over the non-pad query rows, [L, H]."""
    base = getattr(model, "base_model", model)  # the transformer without its LM head
    acc = np.zeros((layout.n_layers, layout.n_heads))
    rows = 0
    n_batches = math.ceil(seqs.n_sequences / batch_size)
    valid = torch.zeros(0, 0, dtype=torch.bool)  # [B, T] of the batch in flight

    def add(layer: int, a: torch.Tensor) -> None:  # a: [B, H, T, S]
        a = a.double()
        ent = -(a * torch.log2(a.clamp_min(1e-30))).sum(-1)  # [B, H, T]
        acc[layer] += ent.permute(0, 2, 1)[valid.to(ent.device)].sum(0).cpu().numpy()  # [B, T, H] -> [N, H] -> [H]

    with HeadTap(model, layout, on_attention=add) as tap:
        for b, (ids, mask) in enumerate(sequence_batches(seqs, batch_size)):
            valid = mask.bool()  # [B, T]
            tap.set_mask(mask)
            dev_ids, dev_mask = to_model(base, ids, mask)
            base(input_ids=dev_ids, attention_mask=dev_mask)
            rows += int(valid.sum())
            if on_step is not None:
                on_step(b + 1, n_batches)
    return acc / max(rows, 1)
