"""BERT family: BERT, RoBERTa, XLM-R encoders (bidirectional, masked-LM objective).

Separate ``query``/``key``/``value`` Linear projections in ``attention.self``; the output
projection ``attention.output.dense`` sits outside it. Head surgery (docs/formulas.md#surgery): rows of
``query``/``key``/``value`` and columns of the output dense go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headgame.models.families.base import Family, LayerCut, TinyTokens, get_path

if TYPE_CHECKING:
    from torch import nn


class BertFamily(Family):
    def auto_class(self, config: Any) -> Any:
        import transformers

        archs = getattr(config, "architectures", None) or []
        if any(a.endswith("ForMaskedLM") for a in archs):
            return transformers.AutoModelForMaskedLM
        return transformers.AutoModel  # e.g. a sentence-embedding checkpoint without an MLM head

    def prune_block(self, block: "nn.Module", cut: LayerCut) -> None:
        from headgame.models.families.slicing import block_rows, slice_linear

        self_attn, o_proj = get_path(block, self.attn_path), get_path(block, self.o_proj_path)
        idx = block_rows(cut.kept, cut.head_dim)
        for name in ("query", "key", "value"):
            slice_linear(getattr(self_attn, name), idx, 0)
        slice_linear(o_proj, idx, 1)
        self_attn.num_attention_heads = len(cut.kept)
        self_attn.all_head_size = len(idx)

    def head_counts(self, block: "nn.Module", head_dim: int) -> tuple[int, int]:
        n = get_path(block, self.attn_path).query.weight.shape[0] // head_dim
        return n, n

    def head_kind(self, model: "nn.Module") -> str:
        return "mlm" if type(model).__name__.endswith("ForMaskedLM") else "pooler"


def _tiny_bert(tokens: TinyTokens, overrides: dict) -> "nn.Module":
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=tokens.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, pad_token_id=tokens.pad, **overrides,
    )
    return BertForMaskedLM(cfg)


FAMILY = BertFamily(
    name="bert",
    description="BERT, RoBERTa, XLM-R (encoders, masked-LM objective)",
    model_types=("bert", "roberta", "xlm-roberta"),
    layer_paths=("bert.encoder.layer", "roberta.encoder.layer", "encoder.layer"),
    attn_path="attention.self",
    o_proj_path="attention.output.dense",
    causal=False,
    tiny=(("tiny-bert", _tiny_bert),),
)
