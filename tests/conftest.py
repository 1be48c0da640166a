"""Shared fixtures: tiny random models (no download).

The model cache ($HEADGAME_CACHE, default ~/.cache/headgame) is the user's own, so the
integration tests reuse the de-quantised SmolLM2 instead of converting it every session."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = ("tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-bert")

# the small plain-text corpora the tiny-model tests train and analyse on
TRAIN_TEXT = (
    "Heads that read the same stream learn to share the work, and sometimes they repeat each other. "
    "A tax on repetition pushes them apart; a bargain between the losses decides how hard. "
) * 40
SHORT_TEXT = (
    "The heads of a transformer read the same residual stream and write back into it. "
    "Some of them attend to the previous token, others to the first token of the sequence, "
    "and a few copy what they find. This paragraph is only here so the tiny model has text. "
) * 12


@pytest.fixture()
def corpus(request, tmp_path):
    """A text file of the module's ``CORPUS_TEXT`` (default :data:`TRAIN_TEXT`)."""
    path = tmp_path / "corpus.txt"
    path.write_text(getattr(request.module, "CORPUS_TEXT", TRAIN_TEXT))
    return path


def run_cli(argv, capsys):
    """``headgame`` in-process: (exit code, stdout, stderr)."""
    from headgame.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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


def logits(model, ids, mask, gates=None, layout=None):
    """Logits without gradients, optionally with HeadTap head gates."""
    from headgame.models.tap import HeadTap

    with torch.no_grad():
        if gates is None:
            return model(input_ids=ids, attention_mask=mask).logits
        with HeadTap(model, layout, gates=gates):
            return model(input_ids=ids, attention_mask=mask).logits


def heads_and_projections(model, layout, run):
    """Per-head outputs HeadTap captured and each layer's o_proj output during ``run(tap)``,
    the latter read by a test-local forward hook, independent of HeadTap."""
    from headgame.models.tap import HeadTap

    proj_out = {}
    handles = [
        layout.o_proj(model, l).register_forward_hook(lambda m, a, o, l=l: proj_out.__setitem__(l, o.detach()))
        for l in range(layout.n_layers)
    ]
    try:
        with HeadTap(model, layout, outputs=True) as tap, torch.no_grad():
            run(tap)
    finally:
        for h in handles:
            h.remove()
    return tap.outputs, proj_out
