"""GPT-NeoX (Pythia): a fused ``query_key_value`` interleaved per head, output ``dense``.

``GPTNeoXAttention.forward`` views the fused output as [B, T, H, 3·dh] and chunks the last axis
into q, k, v, so head h owns the three consecutive dh-row blocks 3h, 3h+1, 3h+2 of
``query_key_value`` (not three H·dh-wide thirds as in GPT-2). Head surgery (docs/formulas.md#surgery)
keeps those rows of the kept heads and their columns of ``dense``; the view infers the head
count from the tensor, so no attribute changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headgame.models.families.base import Family, LayerCut, TinyTokens, get_path

if TYPE_CHECKING:
    from torch import nn


class GPTNeoXFamily(Family):
    def prune_block(self, block: "nn.Module", cut: LayerCut) -> None:
        from headgame.models.families.slicing import block_rows, interleaved_blocks, slice_linear

        attn = get_path(block, self.attn_path)
        slice_linear(attn.query_key_value, block_rows(interleaved_blocks(cut.kept), cut.head_dim), 0)
        slice_linear(attn.dense, block_rows(cut.kept, cut.head_dim), 1)

    def head_counts(self, block: "nn.Module", head_dim: int) -> tuple[int, int]:
        n = get_path(block, self.attn_path).dense.weight.shape[1] // head_dim
        return n, n


def _tiny_gpt_neox(tokens: TinyTokens, overrides: dict) -> "nn.Module":
    # partial rotary (a quarter of each head) and parallel residual, as in Pythia
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=tokens.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, tie_word_embeddings=False,
        pad_token_id=tokens.pad, eos_token_id=tokens.eos, bos_token_id=tokens.bos, **overrides,
    )
    return GPTNeoXForCausalLM(cfg)


FAMILY = GPTNeoXFamily(
    name="gpt_neox",
    description="GPT-NeoX, Pythia (fused query_key_value interleaved per head)",
    model_types=("gpt_neox",),
    layer_paths=("gpt_neox.layers", "layers"),
    attn_path="attention",
    o_proj_path="attention.dense",
    # the MLP's dense_h_to_4h / dense_4h_to_h must not match, so anchor on the attention
    lora_targets=r".*\.attention\.(query_key_value|dense)$",
    tiny=(("tiny-gpt-neox", _tiny_gpt_neox),),
)
