"""Perplexity before and after pruning.

* GSM8K (test split, §2 text format): every problem is scored on its own (no cross-example
  context), truncated to ``max_len`` tokens, with the tokenizer's own special tokens; the first
  token of each text is context only. Problems are taken in file order up to a token budget.
* WikiText-2 (raw test file): the text is tokenized as one stream and cut into non-overlapping
  windows of ``window`` tokens, each scored on its own (first token context only).
* BERT family: masked-LM **pseudo-perplexity** — 15 % of the real tokens masked at random,
  ``seeds`` independent maskings, exp(mean NLL of the masked tokens) — only when the checkpoint
  has an MLM head; otherwise the result says that no perplexity is available.

Perplexity = exp(total NLL / predicted tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from headgame.data.packing import pack_blocks
from headgame.data.sources import iter_texts
from headgame.data.texts import Sequences, gsm8k_texts, pad_id_of, pad_sequences, sequence_batches, tokenize_texts
from headgame.errors import HeadgameError
from headgame.models.layout import HeadLayout
from headgame.models.objective import causal_lm_loss, masked_lm_loss

PSEUDO_SEEDS = 5


@dataclass
class EvalSet:
    name: str  # "gsm8k", "wikitext2"
    label: str  # for reports
    seqs: Sequences
    note: str = ""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "n_texts": self.seqs.n_texts, "n_tokens": self.seqs.n_tokens,
                "truncated": self.seqs.truncated, "note": self.note}


def _sorted(seqs: Sequences) -> Sequences:
    # longest first: batches then pad little (the trailing all-pad columns are dropped)
    order = torch.argsort(seqs.attention_mask.sum(1), descending=True, stable=True)
    return Sequences(seqs.input_ids[order], seqs.attention_mask[order], seqs.n_tokens, seqs.n_texts, seqs.source, seqs.truncated)


def gsm8k_set(tokenizer: Any, path: str, *, fmt: str = "qa", max_len: int = 1024, max_tokens: int | None = None) -> EvalSet:
    ids, cut = tokenize_texts(gsm8k_texts(path, fmt), tokenizer, max_len=max_len, max_tokens=max_tokens)
    seqs = pad_sequences(ids, pad_id_of(tokenizer), source=str(path), truncated=cut)
    budget = "all problems" if max_tokens is None else f"first {seqs.n_texts} problems (budget {max_tokens} tokens)"
    return EvalSet("gsm8k", f"GSM8K test, format {fmt}", _sorted(seqs), f"{budget}; each problem scored alone, max {max_len} tokens")


def wikitext_set(tokenizer: Any, path: str, *, window: int = 512, max_tokens: int | None = None, encoder: bool = False) -> EvalSet:
    wrap = None
    if encoder:
        wrap = (tokenizer.cls_token_id, tokenizer.sep_token_id)
    blocks = pack_blocks(iter_texts(str(path)), tokenizer, seq_len=window, max_tokens=max_tokens,
                         wrap_cls_sep=wrap if wrap and None not in wrap else None, source_name=str(path))
    seqs = Sequences(blocks.input_ids, blocks.attention_mask, blocks.n_tokens, blocks.n_blocks, str(path))
    budget = "whole test set" if max_tokens is None else f"budget {max_tokens} tokens"
    return EvalSet("wikitext2", "WikiText-2 test (raw)", seqs, f"{blocks.n_blocks} non-overlapping windows of {window} tokens ({budget})")


def has_mlm_head(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForMaskedLM")


@torch.no_grad()
def perplexity(model: nn.Module, layout: HeadLayout, tokenizer: Any, evalset: EvalSet, *, batch_size: int = 4,
               seeds: int = PSEUDO_SEEDS, mlm_proxy: bool = False) -> dict[str, Any]:
    """Perplexity (causal) or pseudo-perplexity (BERT with an MLM head) of ``model`` on ``evalset``.

    ``mlm_proxy``: an encoder without an MLM head gets the pseudo-perplexity of the tied-embedding
    proxy h·Eᵀ (models/objective.py), labelled as such, instead of none."""
    total, n = 0.0, 0
    if layout.causal:
        for ids, mask in sequence_batches(evalset.seqs, batch_size):
            out = causal_lm_loss(model, ids, mask)
            total += float(out.loss)
            n += out.n_targets
        kind = "perplexity"
    else:
        if not has_mlm_head(model) and not mlm_proxy:
            return {"available": False, "kind": "pseudo-perplexity",
                    "reason": "the checkpoint has no masked-LM head, so no (pseudo-)perplexity is defined; see the dividends"}
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise HeadgameError("the tokenizer has no [MASK] token; pseudo-perplexity needs a BERT-family tokenizer")
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for s in range(seeds):
            for b, (ids, mask) in enumerate(sequence_batches(evalset.seqs, batch_size)):
                gen = torch.Generator().manual_seed(1000 * s + b)
                out = masked_lm_loss(model, ids, mask, mask_token_id=mask_id, special_ids=special, generator=gen)
                total += float(out.loss)
                n += out.n_targets
        kind = f"pseudo-perplexity (15% masking, {seeds} seeds)" if has_mlm_head(model) else (
            f"pseudo-perplexity of the tied-embedding proxy h·Eᵀ (no MLM head; 15% masking, {seeds} seeds)")
    nll = total / max(n, 1)
    if not math.isfinite(nll):
        raise HeadgameError("non-finite loss while scoring perplexity; run in --dtype float32")
    return {"available": True, "kind": kind, "ppl": math.exp(nll), "nll": nll, "n_tokens": n}
