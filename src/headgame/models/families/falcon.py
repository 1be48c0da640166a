"""Falcon: a fused ``query_key_value`` whose layout depends on the variant, output ``dense``.

``FalconAttention._split_heads`` reads the fused output, in dh-row blocks, as

* ``new_decoder_architecture`` (Falcon-40B/180B, Falcon 2): per KV group j, its g query heads
  then its key and its value: block j·(g+2) + i is query head j·g + i, j·(g+2) + g the key,
  j·(g+2) + g + 1 the value;
* ``multi_query`` (Falcon-7B): the H query heads, then the one key and the one value;
* otherwise (Falcon-RW): per head [q_h, k_h, v_h], as in GPT-NeoX.

Head surgery (docs/formulas.md#surgery) keeps the blocks of the kept heads and their columns of
``dense``. In the grouped layout a KV group goes only with all its query heads; when the kept
query heads are unevenly spread over the kept groups, the fused projection becomes a
:class:`HeadGatherLinear` that lays its output out as one [q, k, v] group per kept query head
(``num_kv_heads`` = query heads). The single key and value of the multi-query layout always
stay. ALiBi variants are not pruned: their per-head slopes are built from the config's head
count for every layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headgame.errors import HeadgameError
from headgame.models.families.base import Family, HeadDims, LayerCut, TinyTokens, get_path

if TYPE_CHECKING:
    from torch import nn


class FalconFamily(Family):
    def dims(self, cfg: Any) -> HeadDims:
        n_heads, d_model = int(cfg.num_attention_heads), int(cfg.hidden_size)
        if cfg.new_decoder_architecture:
            n_kv = int(cfg.num_kv_heads)
        elif cfg.multi_query:
            n_kv = 1
        else:
            n_kv = n_heads
        return HeadDims(n_heads, n_kv, d_model // n_heads, d_model)

    def set_attn_implementation(self, model: "nn.Module", impl: str) -> None:
        # transformers refuses to switch Falcon after loading because its attention does not go
        # through AttentionInterface; but one FalconAttention class serves eager and sdpa and
        # reads config._attn_implementation on every forward, so writing the config switches it.
        current = model.config._attn_implementation
        if {impl, current} - {"eager", "sdpa"}:
            raise HeadgameError(
                f"Falcon cannot switch from {current} to {impl} attention after loading; load it with "
                f"attn_implementation='{impl}'"
            )
        model.config._attn_implementation = impl

    def prune_block(self, block: "nn.Module", cut: LayerCut) -> None:
        from headgame.models.families.slicing import block_rows, gather_linear, interleaved_blocks, slice_linear

        attn = get_path(block, self.attn_path)
        if getattr(attn.config, "alibi", False):
            raise HeadgameError(
                "head surgery does not support ALiBi Falcon models (the per-head slopes follow the config's "
                "head count); gate the heads with HeadTap instead of pruning them"
            )
        dh, kept, nq = cut.head_dim, list(cut.kept), len(cut.kept)
        if attn.new_decoder_architecture:
            g = cut.group_size
            blocks, q_pos, kv_pos = [], {}, {}
            for j in cut.kept_kv:
                for h in kept:
                    if h // g == j:
                        q_pos[h] = len(blocks)
                        blocks.append(j * (g + 2) + h % g)
                kv_pos[j] = len(blocks)
                blocks += [j * (g + 2) + g, j * (g + 2) + g + 1]
            if cut.is_even():
                slice_linear(attn.query_key_value, block_rows(blocks, dh), 0)
                attn.num_kv_heads = len(cut.kept_kv)
            else:
                index = [i for h in kept for i in (q_pos[h], kv_pos[h // g], kv_pos[h // g] + 1)]
                attn.query_key_value = gather_linear(attn.query_key_value, blocks, dh, index)
                attn.num_kv_heads = nq  # one [q, k, v] group per kept query head
        elif attn.multi_query:
            h = cut.n_heads
            slice_linear(attn.query_key_value, block_rows(kept + [h, h + 1], dh), 0)
        else:
            slice_linear(attn.query_key_value, block_rows(interleaved_blocks(kept), dh), 0)
            attn.num_kv_heads = nq
        slice_linear(attn.dense, block_rows(kept, dh), 1)
        attn.num_heads = nq

    def head_counts(self, block: "nn.Module", head_dim: int) -> tuple[int, int]:
        attn = get_path(block, self.attn_path)
        nq = attn.dense.weight.shape[1] // head_dim
        # every layout holds nq query blocks and one key and one value block per KV head
        return nq, (attn.query_key_value.weight.shape[0] // head_dim - nq) // 2

    def ffn_width(self, cfg: Any, d_model: int) -> int:
        return int(getattr(cfg, "ffn_hidden_size", None) or 4 * d_model)


def _tiny_falcon(tokens: TinyTokens, overrides: dict) -> "nn.Module":
    # the grouped layout: 4 query heads in 2 KV groups; pass new_decoder_architecture=False,
    # multi_query=True (or False) for the other two layouts
    from transformers import FalconConfig, FalconForCausalLM

    settings = {"new_decoder_architecture": True, "multi_query": False, **overrides}
    if settings["new_decoder_architecture"]:
        settings.setdefault("num_kv_heads", 2)
    cfg = FalconConfig(
        vocab_size=tokens.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        ffn_hidden_size=128, max_position_embeddings=128, bias=True,
        pad_token_id=tokens.pad, eos_token_id=tokens.eos, bos_token_id=tokens.bos, **settings,
    )
    return FalconForCausalLM(cfg)


FAMILY = FalconFamily(
    name="falcon",
    description="Falcon 1-2 (fused query_key_value: multi-query, grouped new_decoder_architecture)",
    model_types=("falcon",),
    layer_paths=("transformer.h", "h"),
    attn_path="self_attention",
    o_proj_path="self_attention.dense",
    grouped_kv=True,
    # the MLP's dense_h_to_4h / dense_4h_to_h must not match, so anchor on the attention
    lora_targets=r".*\.self_attention\.(query_key_value|dense)$",
    tiny=(("tiny-falcon", _tiny_falcon),),
)
