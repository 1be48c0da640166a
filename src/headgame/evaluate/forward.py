"""Forward passes for evaluation: shared-prefix KV caching and hidden states at chosen positions.

The scorer never asks the model for full ``[B, T, V]`` logits: it runs the decoder (the model
without its LM head), keeps the hidden states at the positions it needs, and lets the decoding
method project them through the head in small chunks. A batch of rows that share a token prefix
(the few-shot preamble of a benchmark, the context of a multiple-choice item) runs that prefix
once; its KV cache is reused by every row of the batch.

Works for a transformers causal LM, a peft model wrapping one (adapter unmerged: the LoRA layers
live inside the wrapped modules, so calling the inner decoder applies them) and a pruned model
(any head count per layer: only the module interfaces are used).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from headgame.errors import HeadgameError
from headgame.models.layout import unwrap_peft

_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm")


@dataclass
class ModelParts:
    """The pieces of a causal LM the evaluator uses: decoder, final norm, LM head."""

    model: nn.Module
    decoder: nn.Module
    norm: nn.Module | None
    lm_head: nn.Module
    n_layers: int
    vocab_size: int
    softcap: float | None

    @classmethod
    def from_model(cls, model: nn.Module) -> "ModelParts":
        hf = unwrap_peft(model)
        config = getattr(hf, "config", None)
        prefix = getattr(hf, "base_model_prefix", "")
        decoder = getattr(hf, prefix, None) if prefix else None
        head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
        if decoder is None or head is None or getattr(config, "is_encoder_decoder", False):
            raise HeadgameError(
                f"{type(hf).__name__} is not a causal language model with an LM head; headgame eval "
                "needs a decoder-only model such as smollm2-135m or tiny-llama"
            )
        if "MaskedLM" in type(hf).__name__ or getattr(config, "is_decoder", True) is False and "Bert" in type(hf).__name__:
            raise HeadgameError(
                f"{type(hf).__name__} is not a causal language model; headgame eval scores next-token "
                "probabilities, so pass a decoder-only model (e.g. smollm2-135m)"
            )
        norm = next((getattr(decoder, n) for n in _NORM_NAMES if isinstance(getattr(decoder, n, None), nn.Module)), None)
        text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        n_layers = int(getattr(text_cfg, "num_hidden_layers", None) or getattr(text_cfg, "n_layer"))
        softcap = getattr(text_cfg, "final_logit_softcapping", None)
        return cls(model, decoder, norm, head, n_layers, int(head.weight.shape[0]), float(softcap) if softcap else None)

    @property
    def device(self) -> torch.device:
        """Where the LM head's weights are: every batch is moved there."""
        return self.lm_head.weight.device

    # ------------------------------------------------------------------ projections
    def logits(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Vocabulary logits of hidden states. ``layer`` is a ``hidden_states`` index: the final
        one (``n_layers`` or None) is already normalised; an earlier one gets the final norm
        first (the "early exit" of DoLa and ActDec)."""
        if layer is not None and layer < self.n_layers and self.norm is not None:
            hidden = self.norm(hidden)
        out = self.lm_head(hidden).float()
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


@dataclass
class Prefix:
    """A token prefix run once; its KV cache is expanded to every row of a batch."""

    tokens: tuple[int, ...]
    cache: Any
    info_hidden: torch.Tensor | None  # [P, d] hidden states at ActDec's info layer (else None)
    sharpness: Any = None  # ActDec's streaming state after the prefix (set by the scorer)

    @property
    def length(self) -> int:
        return len(self.tokens)


def run_prefix(parts: ModelParts, tokens: list[int] | tuple[int, ...], info_layer: int | None = None) -> Prefix:
    """One forward of ``tokens`` (batch 1) keeping the KV cache."""
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=parts.device)
    out = parts.decoder(
        input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
        output_hidden_states=info_layer is not None,
    )
    info = out.hidden_states[info_layer][0] if info_layer is not None else None
    return Prefix(tuple(tokens), out.past_key_values, info)


def expand_cache(prefix: Prefix, batch: int) -> Any:
    """A fresh copy of the prefix cache repeated ``batch`` times (the original stays reusable)."""
    cache = copy.deepcopy(prefix.cache)
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    return cache


@dataclass
class RowsOutput:
    """Hidden states of a batch of rows at the positions asked for, flattened in row order."""

    final: torch.Tensor  # [N, d] normalised last hidden states
    layers: dict[int, torch.Tensor]  # hidden_states index -> [N, d] (raw; early exit adds the norm)
    info: list[torch.Tensor] | None  # per row: [L_row, d] info-layer states of its own (suffix) positions


def run_rows(
    parts: ModelParts,
    rows: list[list[int]],
    positions: list[list[int]],
    *,
    prefix: Prefix | None = None,
    layers: tuple[int, ...] = (),
    info_layer: int | None = None,
    pad_id: int = 0,
) -> RowsOutput:
    """Forward right-padded ``rows`` (token ids after ``prefix``) and keep the hidden states at
    ``positions`` (indices into each row). Every row must be non-empty."""
    b = len(rows)
    p_len = prefix.length if prefix is not None else 0
    width = max(len(r) for r in rows)
    dev = parts.device  # every tensor is made on the model's device (one copy of the token lists)
    ids = torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long, device=dev)  # [B, L]
    cols = torch.arange(width, device=dev)
    lens = torch.tensor([len(r) for r in rows], dtype=torch.long, device=dev)
    mask = torch.cat([torch.ones((b, p_len), dtype=torch.long, device=dev), (cols < lens[:, None]).long()], dim=1)
    pos_ids = (p_len + cols).unsqueeze(0).expand(b, width)  # [B, L]
    want_hidden = bool(layers) or info_layer is not None
    out = parts.decoder(
        input_ids=ids, attention_mask=mask, position_ids=pos_ids,
        past_key_values=expand_cache(prefix, b) if prefix is not None else None,
        use_cache=prefix is not None, output_hidden_states=want_hidden,
    )
    row_idx = torch.tensor([i for i, ps in enumerate(positions) for _ in ps], dtype=torch.long, device=dev)
    col_idx = torch.tensor([p for ps in positions for p in ps], dtype=torch.long, device=dev)
    final = out.last_hidden_state[row_idx, col_idx]  # [B, L, d] -> [N, d]
    layer_states = {l: out.hidden_states[l][row_idx, col_idx] for l in layers}
    info = None
    if info_layer is not None:
        info = []
        for i, r in enumerate(rows):
            info.append(out.hidden_states[info_layer][i, : len(r)])  # [L_row, d]
    return RowsOutput(final, layer_states, info)


def common_prefix_len(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_runs(items: list[list[tuple[int, ...]] | list[list[int]]], min_prefix: int,
                limits: list[int] | None = None) -> list[tuple[int, list[int]]]:
    """Group items (each a list of token rows) into runs that share a token prefix.

    Items are sorted by their first row; an item joins the current run while the run's common
    prefix stays at least ``min_prefix`` tokens and at least half of what it was (one few-shot
    preamble per run, not a short accidental overlap between two preambles). A run's prefix is
    cut to ``limits[i]`` of each member and is kept only when at least two different rows share
    it; runs without a prefix are merged so that unrelated items are still batched together.
    Returns ``(prefix length or 0, item indices)`` per run.
    """
    order = sorted(range(len(items)), key=lambda i: tuple(items[i][0]))
    runs: list[tuple[int, list[int]]] = []
    cur: list[int] = []
    plen = 0
    for i in order:
        if cur:
            first = items[cur[0]][0]
            lcp = min(plen, min(common_prefix_len(first, r) for r in items[i]))
            if lcp >= max(min_prefix, plen // 2):
                cur.append(i)
                plen = lcp
                continue
            runs.append((plen, cur))
        cur = [i]
        plen = min(common_prefix_len(items[i][0], r) for r in items[i])
    if cur:
        runs.append((plen, cur))
    out: list[tuple[int, list[int]]] = []
    for plen, members in runs:
        if limits is not None:
            plen = min([plen, *(limits[i] for i in members)])
        distinct = {tuple(r) for i in members for r in items[i]}
        plen = plen if plen >= min_prefix and len(distinct) > 1 else 0
        if plen == 0 and out and out[-1][0] == 0:
            out[-1][1].extend(members)
        else:
            out.append((plen, list(members)))
    return out
