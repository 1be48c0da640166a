"""GPT-2: fused ``c_attn`` and ``c_proj`` stored as Conv1D (weight [in, out]).

Head surgery (docs/formulas.md#surgery): ``c_attn``'s output is [Q | K | V], each block H·dh wide
(``GPT2Attention.forward`` splits it with ``split(split_size)``), so a head owns one dh-wide
column block in each third; ``c_proj`` loses the head's rows. ``split_size`` and
``num_heads`` follow the kept heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headgame.models.families.base import Family, LayerCut, TinyTokens, get_path

if TYPE_CHECKING:
    from torch import nn


class GPT2Family(Family):
    def prune_block(self, block: "nn.Module", cut: LayerCut) -> None:
        import torch

        from headgame.models.families.slicing import block_rows, keep

        attn = get_path(block, self.attn_path)
        dh, kept = cut.head_dim, list(cut.kept)
        width = cut.n_heads * dh
        cols = torch.cat([block_rows(kept, dh, offset=b * width) for b in range(3)])  # q, k, v blocks of c_attn
        c_attn, c_proj = attn.c_attn, attn.c_proj
        c_attn.weight = keep(c_attn.weight, cols, 1)  # Conv1D weight is [in, out]
        c_attn.bias = keep(c_attn.bias, cols, 0)
        c_attn.nf = c_attn.weight.shape[1]
        c_proj.weight = keep(c_proj.weight, block_rows(kept, dh), 0)
        c_proj.nx = c_proj.weight.shape[0]
        attn.split_size = len(kept) * dh
        attn.num_heads = len(kept)

    def head_counts(self, block: "nn.Module", head_dim: int) -> tuple[int, int]:
        n = get_path(block, self.attn_path).c_attn.weight.shape[1] // (3 * head_dim)
        return n, n

    def ffn_width(self, cfg: Any, d_model: int) -> int:
        return int(getattr(cfg, "n_inner", None) or 4 * d_model)


def _tiny_gpt2(tokens: TinyTokens, overrides: dict) -> "nn.Module":
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=tokens.vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=128,
        pad_token_id=tokens.pad, eos_token_id=tokens.eos, bos_token_id=tokens.bos, **overrides,
    )
    return GPT2LMHeadModel(cfg)


FAMILY = GPT2Family(
    name="gpt2",
    description="GPT-2 (fused c_attn, Conv1D projections)",
    model_types=("gpt2",),
    layer_paths=("transformer.h", "h"),
    attn_path="attn",
    o_proj_path="attn.c_proj",
    o_proj_kind="conv1d",
    max_pos_attrs=("n_positions", "max_position_embeddings"),
    # GPT-2 fuses q/k/v in c_attn; its MLP also has a c_proj, so match the attention's only
    lora_targets=r".*\.attn\.(c_attn|c_proj)$",
    lora_fan_in_fan_out=True,
    tiny=(("tiny-gpt2", _tiny_gpt2),),
)
