"""Phi-3: a fused ``qkv_proj`` laid out [Q | K | V] with grouped-query attention, ``o_proj``.

``Phi3Attention.forward`` cuts the fused output at ``config.num_attention_heads·dh`` (queries)
and ``num_key_value_heads·dh`` (keys), values last. Head surgery (docs/formulas.md#surgery) keeps the
Q blocks of the kept query heads and the K and V blocks of the kept KV heads (a KV head goes
only with its whole query group, as in the Llama family). The query cut is read from the
*shared* model config, so each pruned layer gets a :class:`LayerConfig` view with its own
query-head count. With the kept query heads unevenly spread over the KV groups, the fused
projection becomes a :class:`HeadGatherLinear` that hands every kept query head its KV head's
blocks (``num_key_value_heads`` = query heads, groups of 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headgame.models.families.base import Family, LayerCut, TinyTokens, get_path

if TYPE_CHECKING:
    from torch import nn


class LayerConfig:
    """The shared model config as one pruned layer sees it: its own fields, the rest live.

    Reads and writes of every other field go to the shared config, so switching the attention
    implementation of the model (HeadTap's argmax, the FLOP counter) still reaches the layer.
    """

    def __init__(self, shared: Any, **own: Any) -> None:
        object.__setattr__(self, "_shared", shared)
        object.__setattr__(self, "_own", dict(own))

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if "_own" not in d:  # half-built (copy / unpickle): nothing to delegate to yet
            raise AttributeError(name)
        return d["_own"][name] if name in d["_own"] else getattr(d["_shared"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._own:
            self._own[name] = value
        else:
            setattr(self._shared, name, value)

    def __repr__(self) -> str:
        return f"LayerConfig({self._own}, shared={type(self._shared).__name__})"


class Phi3Family(Family):
    def prune_block(self, block: "nn.Module", cut: LayerCut) -> None:
        from headgame.models.families.slicing import block_rows, gather_linear, slice_linear

        attn = get_path(block, self.attn_path)
        dh, kept, kept_kv = cut.head_dim, list(cut.kept), list(cut.kept_kv)
        h, kv = cut.n_heads, cut.n_kv_heads
        blocks = kept + [h + g for g in kept_kv] + [h + kv + g for g in kept_kv]  # Q | K | V
        nq, nkv = len(kept), len(kept_kv)
        if cut.is_even():
            slice_linear(attn.qkv_proj, block_rows(blocks, dh), 0)
            attn.num_key_value_heads = nkv
            attn.num_key_value_groups = cut.group_counts()[0]
        else:
            index = list(range(nq)) + [nq + j for j in cut.kv_index()] + [nq + nkv + j for j in cut.kv_index()]
            attn.qkv_proj = gather_linear(attn.qkv_proj, blocks, dh, index)
            attn.num_key_value_heads = nq
            attn.num_key_value_groups = 1
        slice_linear(attn.o_proj, block_rows(kept, dh), 1)
        shared = attn.config._shared if isinstance(attn.config, LayerConfig) else attn.config
        attn.config = LayerConfig(shared, num_attention_heads=nq)

    def head_counts(self, block: "nn.Module", head_dim: int) -> tuple[int, int]:
        attn = get_path(block, self.attn_path)
        nq = attn.o_proj.weight.shape[1] // head_dim
        return nq, (attn.qkv_proj.weight.shape[0] // head_dim - nq) // 2


def _tiny_phi3(tokens: TinyTokens, overrides: dict) -> "nn.Module":
    # GQA: 4 query heads over 2 KV heads; gated MLP with a fused gate_up_proj
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(
        vocab_size=tokens.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        original_max_position_embeddings=128, sliding_window=None, tie_word_embeddings=True,
        pad_token_id=tokens.pad, eos_token_id=tokens.eos, bos_token_id=tokens.bos, **overrides,
    )
    return Phi3ForCausalLM(cfg)


FAMILY = Phi3Family(
    name="phi3",
    description="Phi-3, Phi-3.5, Phi-4 (fused qkv_proj [Q|K|V], GQA)",
    model_types=("phi3",),
    layer_paths=("model.layers", "layers"),
    attn_path="self_attn",
    o_proj_path="self_attn.o_proj",
    grouped_kv=True,
    config_shrinks=True,
    lora_targets=("qkv_proj", "o_proj"),
    mlp_matrices=3,  # gate_up_proj holds two d×ff matrices, down_proj the third
    tiny=(("tiny-phi3", _tiny_phi3),),
)
