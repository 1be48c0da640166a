"""Performance- and attention-based head importances (the baselines of spec gt-fep §3.7, §4.5).

* :func:`ablation_delta_nll`: the increase in mean token NLL when head i alone is gated off
  (HeadTap gates; one forward per head).
* :func:`michel_importance`: Michel et al. (2019) head importance, E|∂L/∂g_i| through HeadTap
  gates g = 1, each layer's scores divided by their L2 norm (their normalisation).
* :func:`attention_entropy`: mean per-row attention entropy (bits) of each head, over the
  non-pad query rows (eager attention, the model's own ``output_attentions``).
* :func:`coupling_row_mass`: Σ_{j≠i} |G_ij| of analyze's head interaction matrix G.

All return [L, H] float arrays. Losses: next-token cross-entropy for causal models; for BERT a
15 % masked-LM loss with one fixed masking (the same tokens are masked in every forward, so
ΔNLL compares like with like), through the MLM head or the tied-embedding proxy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from headgame.errors import HeadgameError
from headgame.fep.texts import Sequences
from headgame.models.layout import HeadLayout
from headgame.models.objective import activation_gradients, causal_lm_loss, masked_lm_loss
from headgame.models.tap import HeadTap

Progress = Callable[[int, int], None]


def batches(seqs: Sequences, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for s in range(0, seqs.n_sequences, batch_size):
        ids = seqs.input_ids[s : s + batch_size]
        mask = seqs.attention_mask[s : s + batch_size]
        width = int(mask.sum(1).max())  # drop all-pad columns
        yield ids[:, :width], mask[:, :width]


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
    for b, (ids, mask) in enumerate(batches(seqs, batch_size)):
        loss, k = lm_loss(model, layout, tokenizer, ids, mask, seed=seed + b)
        total += float(loss)
        n += k
    return total / max(n, 1)


def ablation_delta_nll(model, layout: HeadLayout, tokenizer, seqs: Sequences, *, batch_size: int = 4, seed: int = 0,
                       on_step: Progress | None = None) -> tuple[np.ndarray, float]:
    """ΔNLL (nats/token) of gating off each head alone, [L, H]; and the unablated NLL."""
    gates = {l: torch.ones(layout.n_heads) for l in range(layout.n_layers)}
    out = np.zeros((layout.n_layers, layout.n_heads))
    total = layout.n_layers * layout.n_heads
    with HeadTap(model, layout, gates=gates):  # the hooks read the gate tensors we edit in place
        base = mean_nll(model, layout, tokenizer, seqs, batch_size, seed=seed)
        for l in range(layout.n_layers):
            for h in range(layout.n_heads):
                gates[l][h] = 0.0
                out[l, h] = mean_nll(model, layout, tokenizer, seqs, batch_size, seed=seed) - base
                gates[l][h] = 1.0
                if on_step is not None:
                    on_step(l * layout.n_heads + h + 1, total)
    return out, base


def michel_importance(model, layout: HeadLayout, tokenizer, seqs: Sequences, *, batch_size: int = 4, seed: int = 0,
                      normalise: bool = True, on_step: Progress | None = None) -> np.ndarray:
    """E_batches |∂L/∂g_i| with gates g = 1 (Michel et al. 2019), per-layer L2-normalised, [L, H]."""
    gates = {l: torch.ones(layout.n_heads, requires_grad=True) for l in range(layout.n_layers)}
    acc = np.zeros((layout.n_layers, layout.n_heads))
    n_batches = math.ceil(seqs.n_sequences / batch_size)
    with activation_gradients(model), HeadTap(model, layout, gates=gates), torch.enable_grad():
        for b, (ids, mask) in enumerate(batches(seqs, batch_size)):
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


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with eager attention inside the block (SDPA returns no weights)."""
    prev = getattr(model.config, "_attn_implementation", None)
    if prev != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if prev is not None and prev != "eager":
            model.set_attn_implementation(prev)


@torch.no_grad()
def attention_entropy(model, layout: HeadLayout, seqs: Sequences, *, batch_size: int = 2, on_step: Progress | None = None) -> np.ndarray:
    """Mean per-row attention entropy in bits of each head over the non-pad query rows, [L, H]."""
    base = getattr(model, "base_model", model)
    acc = np.zeros((layout.n_layers, layout.n_heads))
    rows = 0
    n_batches = math.ceil(seqs.n_sequences / batch_size)
    with eager_attention(model):
        for b, (ids, mask) in enumerate(batches(seqs, batch_size)):
            out = base(input_ids=ids, attention_mask=mask, output_attentions=True)
            valid = mask.bool()  # [B, T]
            rows += int(valid.sum())
            for l, a in enumerate(out.attentions):  # [B, H, T, S]
                a = a.double()
                ent = -(a * torch.log2(a.clamp_min(1e-30))).sum(-1)  # [B, H, T]
                acc[l] += ent.permute(0, 2, 1)[valid].sum(0).numpy()  # [B, T, H] -> [N, H] -> [H]
            if on_step is not None:
                on_step(b + 1, n_batches)
    return acc / max(rows, 1)


def coupling_row_mass(analysis: dict, layout: HeadLayout) -> np.ndarray:
    """Σ_{j≠i} |G_ij| per head from an analyze result (``analysis.json``), [L, H]."""
    layers = {int(lay["layer"]): np.asarray(lay["G"], dtype=float) for lay in analysis.get("layers", [])}
    missing = [l for l in range(layout.n_layers) if l not in layers]
    if missing:
        raise HeadgameError(
            f"the analysis lacks layers {missing[:5]}{'...' if len(missing) > 5 else ''}; run headgame analyze --layers all on this model"
        )
    out = np.zeros((layout.n_layers, layout.n_heads))
    for l, g in layers.items():
        if l >= layout.n_layers:
            continue
        if g.shape != (layout.n_heads, layout.n_heads):
            raise HeadgameError(f"G of layer {l} is {g.shape[0]}x{g.shape[1]}, not {layout.n_heads}x{layout.n_heads}; use the analysis of this model")
        out[l] = np.abs(g - np.diag(np.diag(g))).sum(1)
    return out


def compute_coupling(model, layout: HeadLayout, tokenizer, seqs: Sequences, *, batch_size: int = 4, seed: int = 0) -> dict:
    """Run analyze's G accumulation (no redundancy, no report) on ``seqs``; returns {"layers": [{layer, G}]}."""
    from headgame.analyze.collect import CouplingCollector
    from headgame.game.coupling import interaction_matrix, weight_coupling
    from headgame.models.objective import Objective

    objective = Objective(model, layout, tokenizer, seed=seed)
    layers = list(range(layout.n_layers))
    collector = CouplingCollector(model, layout, objective, layers, redundancy=False)
    with collector:
        for ids, mask in batches(seqs, batch_size):
            collector.step(ids, mask)
    out = []
    for l in layers:
        with torch.no_grad():
            omega = weight_coupling(layout.head_slices(model, l).detach().double())
        out.append({"layer": l, "G": interaction_matrix(omega, collector.grams[l].rho()).tolist()})
    return {"layers": out}
