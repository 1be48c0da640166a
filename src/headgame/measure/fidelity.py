"""Embedding fidelity of a pruned encoder: how much its sentence embeddings still point where the
unpruned model's do.

An encoder such as all-MiniLM-L6-v2 is used for its sentence embeddings (sentence-transformers
mean-pools the last hidden states over the real tokens and L2-normalises them) and ships no
masked-LM head, so no perplexity measures what pruning costs it. This module embeds every
sequence of an evaluation set that way and reports, per pruned model, the cosine of each
sequence's embedding with the unpruned model's embedding of the same sequence: 1 means the
pruned model embeds exactly as before; the mean, the minimum and the standard deviation over the
sequences are kept.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from headgame.data.texts import sequence_batches
from headgame.models.device import to_model


def _last_hidden(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    h = getattr(out, "last_hidden_state", None)
    return h if h is not None else out.hidden_states[-1]  # an MLM model's last encoder layer, before its head


@torch.no_grad()
def sentence_embeddings(model: nn.Module, seqs: Any, *, batch_size: int = 4) -> torch.Tensor:
    """``[n_sequences, d]`` float32, unit length: the mean of the last hidden states over the real
    tokens of each sequence (``attention_mask`` 1), in the order of ``seqs``."""
    rows = []
    for ids, mask in sequence_batches(seqs, batch_size):
        ids, mask = to_model(model, ids, mask)
        h = _last_hidden(model, ids, mask).float()
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        rows.append(F.normalize(pooled, dim=-1).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def fidelity(embeddings: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """Per-sequence cosine of ``embeddings`` with ``reference`` (both unit rows of the same
    sequences): mean, sd (n − 1), min and n."""
    if embeddings.shape != reference.shape:
        raise ValueError(f"embeddings {tuple(embeddings.shape)} and reference {tuple(reference.shape)} differ: "
                         "embed the same sequences with both models")
    cos = (embeddings * reference).sum(-1).double()
    n = int(cos.numel())
    return {"kind": "cosine of mean-pooled sentence embeddings with the unpruned model's",
            "cosine_mean": float(cos.mean()) if n else math.nan,
            "cosine_sd": float(cos.std(unbiased=True)) if n > 1 else math.nan,
            "cosine_min": float(cos.min()) if n else math.nan, "n_sequences": n}
