"""Llama family: Llama, Qwen2/3, Mistral, Gemma 1-3, SmolLM2/3, OLMo 1-2.

Separate ``q_proj``/``k_proj``/``v_proj`` Linear projections with grouped-query attention and
an ``o_proj`` whose input is the concatenated heads; a gated MLP (gate, up, down).

Head surgery (docs/formulas.md#surgery): the pruned query heads' rows of ``q_proj`` and columns of
``o_proj`` go; a KV head (its ``k_proj``/``v_proj`` rows) goes only when its whole query group
is gone. When the kept query heads are spread evenly over the kept KV heads, the layer stays a
plain GQA layer (``num_key_value_groups`` = heads kept per group). When they are not (e.g.
3/2/2), ``k_proj``/``v_proj`` and the KV cache still hold only the kept KV heads, and each query
head receives its KV head inside attention, after the cache (families/kvgather.py: a gather,
no FLOPs), with ``num_key_value_groups = 1``. Layers may keep different numbers of heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headgame.models.families.base import Family, LayerCut, TinyTokens, get_path

if TYPE_CHECKING:
    from torch import nn


class LlamaFamily(Family):
    def prune_block(self, block: "nn.Module", cut: LayerCut) -> None:
        import torch

        from headgame.models.families.slicing import block_rows, slice_linear

        attn = get_path(block, self.attn_path)
        dh = cut.head_dim
        kept, kept_kv = list(cut.kept), list(cut.kept_kv)
        slice_linear(attn.q_proj, block_rows(kept, dh), 0)
        slice_linear(attn.o_proj, block_rows(kept, dh), 1)
        slice_linear(attn.k_proj, block_rows(kept_kv, dh), 0)
        slice_linear(attn.v_proj, block_rows(kept_kv, dh), 0)
        counts = cut.group_counts()
        if cut.is_even():
            # kept query heads are sorted by group, so new head j belongs to kept KV head j // c
            attn.num_key_value_groups = counts[0]
        else:
            index = torch.tensor(cut.kv_index(), dtype=torch.long, device=attn.q_proj.weight.device)
            attn.register_buffer("headgame_kv_index", index, persistent=False)  # used by families/kvgather.py
            attn.num_key_value_groups = 1

    def head_counts(self, block: "nn.Module", head_dim: int) -> tuple[int, int]:
        attn = get_path(block, self.attn_path)
        return attn.q_proj.weight.shape[0] // head_dim, attn.k_proj.weight.shape[0] // head_dim


def _tiny_llama(tokens: TinyTokens, overrides: dict) -> "nn.Module":
    # Llama with GQA: 4 query heads over 2 KV heads
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=tokens.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=tokens.pad, eos_token_id=tokens.eos, bos_token_id=tokens.bos,
        **overrides,
    )
    return LlamaForCausalLM(cfg)


def _tiny_qwen2(tokens: TinyTokens, overrides: dict) -> "nn.Module":
    # Qwen2: GQA with q/k/v biases
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=tokens.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=tokens.pad, eos_token_id=tokens.eos, bos_token_id=tokens.bos,
        **overrides,
    )
    return Qwen2ForCausalLM(cfg)


FAMILY = LlamaFamily(
    name="llama",
    description="Llama, Qwen2/3, Mistral, Gemma 1-3, SmolLM2/3, OLMo 1-2 (separate q/k/v, GQA)",
    model_types=(
        "llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3", "gemma3_text",
        "smollm3", "olmo", "olmo2",
    ),
    layer_paths=("model.layers", "layers", "model.language_model.layers", "language_model.layers"),
    attn_path="self_attn",
    o_proj_path="self_attn.o_proj",
    grouped_kv=True,
    config_shrinks=True,
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
    mlp_matrices=3,
    tiny=(("tiny-llama", _tiny_llama), ("tiny-qwen2", _tiny_qwen2)),
)
