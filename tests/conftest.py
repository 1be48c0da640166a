"""Shared fixtures: tiny random models (no download).

The model cache ($HEADGAME_CACHE, default ~/.cache/headgame) is the user's own, so the
integration tests reuse the de-quantised SmolLM2 instead of converting it every session."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = ("tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-bert")


@pytest.fixture(params=TINY)
def tiny(request):
    from headgame.models.load import load_model

    return load_model(request.param)


def random_batch(vocab: int, batch: int = 2, seq: int = 12, seed: int = 0, pad_last: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_last:
        mask[-1, seq - pad_last:] = 0
        ids[-1, seq - pad_last:] = 256  # <pad>
    return ids, mask
