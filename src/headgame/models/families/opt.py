"""OPT: separate ``q_proj``/``k_proj``/``v_proj`` and ``out_proj``, learned positions, a ReLU MLP.

Head surgery (docs/formulas.md#surgery): rows of q/k/v and columns of ``out_proj``; ``OPTAttention``
views q/k/v with its own ``num_heads``, which follows the kept heads. OPT-350m projects the
embeddings from ``word_embed_proj_dim`` to the model width and back (``project_in`` /
``project_out``); the FLOP count includes both with the LM head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headgame.models.families.base import Family, LayerCut, TinyTokens, get_path

if TYPE_CHECKING:
    from torch import nn


class OPTFamily(Family):
    def prune_block(self, block: "nn.Module", cut: LayerCut) -> None:
        from headgame.models.families.slicing import block_rows, slice_linear

        attn = get_path(block, self.attn_path)
        idx = block_rows(cut.kept, cut.head_dim)
        for name in ("q_proj", "k_proj", "v_proj"):
            slice_linear(getattr(attn, name), idx, 0)
        slice_linear(attn.out_proj, idx, 1)
        attn.num_heads = len(cut.kept)

    def head_counts(self, block: "nn.Module", head_dim: int) -> tuple[int, int]:
        n = get_path(block, self.attn_path).q_proj.weight.shape[0] // head_dim
        return n, n

    def ffn_width(self, cfg: Any, d_model: int) -> int:
        return int(cfg.ffn_dim)

    def lm_head_flops(self, model: "nn.Module", kind: str, seq_len: int, d_model: int, vocab: int) -> int:
        cfg = model.config
        proj = int(getattr(cfg, "word_embed_proj_dim", None) or d_model)
        if kind != "lm" or proj == d_model:
            return super().lm_head_flops(model, kind, seq_len, d_model, vocab)
        # project_in (embeddings -> width), project_out (width -> proj) and the LM head over proj
        return 2 * seq_len * (proj * d_model + d_model * proj + proj * vocab)


def _tiny_opt(tokens: TinyTokens, overrides: dict) -> "nn.Module":
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(
        vocab_size=tokens.vocab_size, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
        num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=128, dropout=0.0,
        pad_token_id=tokens.pad, eos_token_id=tokens.eos, bos_token_id=tokens.bos, **overrides,
    )
    return OPTForCausalLM(cfg)


FAMILY = OPTFamily(
    name="opt",
    description="OPT (separate q/k/v, out_proj)",
    model_types=("opt",),
    layer_paths=("model.decoder.layers", "decoder.layers"),
    attn_path="self_attn",
    o_proj_path="self_attn.out_proj",
    lora_targets=("q_proj", "k_proj", "v_proj", "out_proj"),
    tiny=(("tiny-opt", _tiny_opt),),
)
