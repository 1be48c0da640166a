"""The language-modelling loss whose gradient defines gradient coupling (docs/formulas.md, ρ).

Causal models use next-token cross-entropy. Encoder models (BERT family) use a masked-LM loss:
15 % of the real tokens are replaced by [MASK] with a seeded generator. When the checkpoint has
no MLM head (e.g. the sentence-embedding MiniLM), the logits come from the tied word embeddings,
``h · Eᵀ``: a proxy objective, reported as ``masked-lm (tied-embedding proxy)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from headgame.models.device import to_model
from headgame.models.layout import HeadLayout

MLM_RATE = 0.15


@dataclass
class LossOutput:
    loss: torch.Tensor  # summed over predicted tokens (equal weight per token across batches)
    n_targets: int


def objective_name(model: nn.Module, layout: HeadLayout) -> str:
    if layout.causal:
        return "causal-lm (next-token cross-entropy)"
    if _has_mlm_head(model):
        return "masked-lm (15% masking, model's MLM head)"
    return "masked-lm (15% masking, tied-embedding proxy: no MLM head in the checkpoint)"


def _has_mlm_head(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForMaskedLM")


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> LossOutput:
    input_ids, attention_mask = to_model(model, input_ids, attention_mask)  # batches are built on the CPU
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [B, T, V]
    targets = input_ids[:, 1:].clone()  # [B, T-1]
    if attention_mask is not None:
        targets[attention_mask[:, 1:] == 0] = -100
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return LossOutput(loss, int((targets != -100).sum()))


def masked_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    mask_token_id: int,
    special_ids: set[int],
    generator: torch.Generator,
) -> LossOutput:
    input_ids, attention_mask = to_model(model, input_ids, attention_mask)  # batches are built on the CPU
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    for sid in special_ids:
        valid &= input_ids != sid
    # drawn on the (CPU) generator's device, so a seed masks the same tokens on every device
    draw = torch.rand(input_ids.shape, generator=generator, device=generator.device).to(input_ids.device) < MLM_RATE
    chosen = valid & draw
    if not chosen.any():  # guarantee at least one target per batch
        first = valid.nonzero()[:1]
        chosen[first[:, 0], first[:, 1]] = True
    masked = input_ids.masked_fill(chosen, mask_token_id)
    targets = input_ids.masked_fill(~chosen, -100)
    if _has_mlm_head(model):
        logits = model(input_ids=masked, attention_mask=attention_mask).logits
    else:
        hidden = model(input_ids=masked, attention_mask=attention_mask).last_hidden_state  # [B, T, d]
        logits = hidden @ model.get_input_embeddings().weight.t()  # [B, T, V]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100, reduction="sum")
    return LossOutput(loss, int(chosen.sum()))


class Objective:
    """Callable computing the model's LM loss on a batch; seeded for the masked-LM case."""

    def __init__(self, model: nn.Module, layout: HeadLayout, tokenizer, seed: int = 0) -> None:
        self.model = model
        self.layout = layout
        self.name = objective_name(model, layout)
        self.generator = torch.Generator().manual_seed(seed)
        self.mask_token_id = getattr(tokenizer, "mask_token_id", None)
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        if not layout.causal and self.mask_token_id is None:
            from headgame.errors import HeadgameError

            raise HeadgameError("the tokenizer has no [MASK] token, needed for the masked-LM objective; use a BERT-family tokenizer")

    def skip(self, input_ids: torch.Tensor) -> None:
        """Draw (and drop) the masked-LM draws of a batch scored elsewhere (another process), so
        the batches after it are masked as in a run that scores every batch."""
        if not self.layout.causal:
            torch.rand(input_ids.shape, generator=self.generator, device=self.generator.device)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> LossOutput:
        if self.layout.causal:
            return causal_lm_loss(self.model, input_ids, attention_mask)
        return masked_lm_loss(
            self.model, input_ids, attention_mask, mask_token_id=self.mask_token_id,
            special_ids=self.special_ids, generator=self.generator,
        )
