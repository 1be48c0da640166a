"""Tiny random-weight models built from configs, with a byte-level tokenizer; no download.

Used by the unit tests and by ``headgame analyze --model tiny-llama`` for quick checks. Every
architecture family defines its own in ``models/families/<family>.py``: Llama with GQA, Qwen2
(GQA, q/k/v biases), GPT-2 (Conv1D projections), BERT (bidirectional, masked-LM head), GPT-NeoX
(fused QKV interleaved per head), OPT, Phi-3 (fused [Q|K|V], GQA) and Falcon (grouped fused
QKV; multi-query and per-head layouts through config overrides).
"""

from __future__ import annotations

import torch
from torch import nn

from headgame.errors import HeadgameError
from headgame.models.families import TinyBuilder, TinyTokens, tiny_builders

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "[CLS]", "[SEP]", "[MASK]")
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # 256 byte symbols + specials


def byte_tokenizer():
    """A byte-level tokenizer (every UTF-8 byte is a token) wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {sym: i for i, sym in enumerate(alphabet)}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    return tok


# ids of the byte tokenizer above: 256 byte symbols, then the specials in order
TINY_TOKENS = TinyTokens(
    vocab_size=VOCAB_SIZE, pad=256 + SPECIAL_TOKENS.index("<pad>"), eos=256 + SPECIAL_TOKENS.index("<eos>"),
    bos=256 + SPECIAL_TOKENS.index("<bos>"),
)

# every family's tiny models (``Family.tiny`` in models/families/), by name
TINY_BUILDERS: dict[str, TinyBuilder] = tiny_builders()


def tiny_model(name: str, *, seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> nn.Module:
    """Build the tiny random model ``name`` (one of :data:`TINY_BUILDERS`) deterministically.

    ``overrides`` are passed to the config (e.g. ``num_hidden_layers=3``).
    """
    if name not in TINY_BUILDERS:
        raise HeadgameError(f"unknown tiny model '{name}'; choose one of {', '.join(TINY_BUILDERS)}")
    torch.manual_seed(seed)
    model = TINY_BUILDERS[name](TINY_TOKENS, {"attn_implementation": attn_implementation, **overrides})
    model.eval()
    return model
