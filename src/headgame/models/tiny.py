"""Tiny random-weight models built from configs, with a byte-level tokenizer; no download.

Used by the unit tests and by ``headgame analyze --model tiny-llama`` for quick checks. Each
architecture the layouts support has one: Llama with GQA, Qwen2 (GQA, q/k/v biases), GPT-2
(Conv1D projections) and BERT (bidirectional, masked-LM head).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from headgame.errors import HeadgameError

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


def _llama(seed_cfg: dict) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=256, eos_token_id=257, bos_token_id=258,
        **seed_cfg,
    )
    return LlamaForCausalLM(cfg)


def _qwen2(seed_cfg: dict) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=256, eos_token_id=257, bos_token_id=258,
        **seed_cfg,
    )
    return Qwen2ForCausalLM(cfg)


def _gpt2(seed_cfg: dict) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB_SIZE, n_embd=64, n_layer=2, n_head=4, n_positions=128,
        pad_token_id=256, eos_token_id=257, bos_token_id=258, **seed_cfg,
    )
    return GPT2LMHeadModel(cfg)


def _bert(seed_cfg: dict) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, pad_token_id=256, **seed_cfg,
    )
    return BertForMaskedLM(cfg)


TINY_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "tiny-llama": _llama,
    "tiny-qwen2": _qwen2,
    "tiny-gpt2": _gpt2,
    "tiny-bert": _bert,
}


def tiny_model(name: str, *, seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> nn.Module:
    """Build the tiny random model ``name`` (one of :data:`TINY_BUILDERS`) deterministically.

    ``overrides`` are passed to the config (e.g. ``num_hidden_layers=3``).
    """
    if name not in TINY_BUILDERS:
        raise HeadgameError(f"unknown tiny model '{name}'; choose one of {', '.join(TINY_BUILDERS)}")
    torch.manual_seed(seed)
    model = TINY_BUILDERS[name]({"attn_implementation": attn_implementation, **overrides})
    model.eval()
    return model
