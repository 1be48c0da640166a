"""Where the heads live in each supported architecture.

A :class:`HeadLayout` knows the number of layers, query heads, KV heads and head dim of a
model, and how to reach each layer's attention module, its output projection and each head's
slice W_O^(i) of that projection (docs/formulas.md#head-slices). All per-head code goes through it; what
differs between architectures is asked of the layout's :class:`Family` (``models/families/``,
one module per family), so adding an architecture means adding one family module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headgame.errors import HeadgameError
from headgame.models.families import Family, family_for_model_type, get_family, get_path, supported_model_types

__all__ = ["Family", "HeadLayout", "supported_model_types"]

if TYPE_CHECKING:
    import torch
    from torch import nn


def unwrap_peft(model: "nn.Module") -> "nn.Module":
    """The transformers model inside a peft wrapper (adapter layers stay in place and active);
    any other model unchanged. A model can only be a ``PeftModel`` once peft is imported, so
    this never imports peft itself."""
    peft = sys.modules.get("peft")
    if peft is not None and isinstance(model, peft.PeftModel):
        return model.get_base_model()
    return model


@dataclass(frozen=True)
class HeadLayout:
    """Head geometry of one model and accessors for its per-layer modules."""

    family: str
    model_type: str
    architecture: str
    n_layers: int
    n_heads: int  # query heads: the players (docs/formulas.md#head-slices)
    n_kv_heads: int
    head_dim: int
    d_model: int
    max_positions: int | None
    causal: bool
    layer_path: str
    attn_path: str
    o_proj_path: str
    o_proj_kind: str

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_model(cls, model: "nn.Module") -> "HeadLayout":
        base = unwrap_peft(model)
        config = getattr(base, "config", None)
        if config is None:
            raise HeadgameError(
                f"{type(base).__name__} has no Hugging Face config; load the model with "
                "headgame.load_model or transformers"
            )
        text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        model_type = getattr(text_cfg, "model_type", None) or getattr(config, "model_type", "")
        fam = family_for_model_type(model_type) or family_for_model_type(getattr(config, "model_type", ""))
        if fam is None:
            raise HeadgameError(
                f"unsupported architecture '{model_type}' ({type(base).__name__}); supported model "
                f"types: {', '.join(supported_model_types())}"
            )
        layer_path = None
        for path in fam.layer_paths:
            try:
                get_path(base, path)
            except AttributeError:
                continue
            layer_path = path
            break
        if layer_path is None:
            raise HeadgameError(
                f"could not find the transformer blocks of {type(base).__name__} (tried "
                f"{', '.join(fam.layer_paths)}); load a standard Hugging Face {fam.name}-family model"
            )
        n_heads, n_kv, head_dim, d_model = fam.dims(text_cfg)
        max_pos = None
        for attr in fam.max_pos_attrs:
            if getattr(text_cfg, attr, None):
                max_pos = int(getattr(text_cfg, attr))
                break
        blocks = get_path(base, layer_path)
        return cls(
            family=fam.name,
            model_type=model_type,
            architecture=type(base).__name__,
            n_layers=len(blocks),
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=int(head_dim),
            d_model=d_model,
            max_positions=max_pos,
            causal=fam.causal,
            layer_path=layer_path,
            attn_path=fam.attn_path,
            o_proj_path=fam.o_proj_path,
            o_proj_kind=fam.o_proj_kind,
        )

    @property
    def family_def(self) -> Family:
        """The :class:`Family` object of this layout: every per-architecture question goes to it."""
        return get_family(self.family)

    # ----------------------------------------------------------------- module access
    def blocks(self, model: "nn.Module") -> list["nn.Module"]:
        return list(get_path(unwrap_peft(model), self.layer_path))

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise HeadgameError(
                f"layer {layer} is out of range for this model ({self.n_layers} layers, 0-based); "
                f"use 0..{self.n_layers - 1}"
            )
        return layer

    def attention(self, model: "nn.Module", layer: int) -> "nn.Module":
        """The module whose forward returns ``(attn_output, attn_weights)``."""
        return get_path(self.blocks(model)[self.check_layer(layer)], self.attn_path)

    def o_proj(self, model: "nn.Module", layer: int) -> "nn.Module":
        """The output projection; its input is the concatenation of the head outputs."""
        return get_path(self.blocks(model)[self.check_layer(layer)], self.o_proj_path)

    def o_proj_weight(self, model: "nn.Module", layer: int) -> "torch.Tensor":
        """Effective output-projection weight in Linear convention, shape [d_model, H*dh].

        A peft LoRA wrapper contributes its merged delta (W + (α/r)·B·A, docs/formulas.md#head-slices),
        and the result stays differentiable with respect to the adapter factors.
        """
        mod = self.o_proj(model, layer)
        base = getattr(mod, "base_layer", mod)
        weight = base.weight
        if self.o_proj_kind == "conv1d":
            weight = weight.t()  # Conv1D stores [in, out]; Linear convention is [out, in]
        if hasattr(mod, "get_delta_weight") and hasattr(mod, "lora_A"):
            for name in getattr(mod, "active_adapters", []):
                if name in mod.lora_A and not getattr(mod, "merged", False):
                    delta = mod.get_delta_weight(name)
                    # peft already returns the delta in the base layer's convention
                    weight = weight + (delta.t() if self.o_proj_kind == "conv1d" else delta)
        return weight

    def o_proj_bias(self, model: "nn.Module", layer: int) -> "torch.Tensor | None":
        mod = self.o_proj(model, layer)
        return getattr(getattr(mod, "base_layer", mod), "bias", None)

    def head_slices(self, model: "nn.Module", layer: int) -> "torch.Tensor":
        """W_O^(i) for every query head, shape [H, d_model, dh] (docs/formulas.md#head-slices)."""
        weight = self.o_proj_weight(model, layer)  # [d, H*dh]
        d = weight.shape[0]
        # [d, H*dh] -> [d, H, dh] -> [H, d, dh]
        return weight.reshape(d, self.n_heads, self.head_dim).permute(1, 0, 2)

    def describe(self) -> dict:
        return {
            "family": self.family,
            "model_type": self.model_type,
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "d_model": self.d_model,
            "max_positions": self.max_positions,
            "objective": "causal-lm" if self.causal else "masked-lm",
        }

    def parse_layers(self, spec: str | list[int] | None) -> list[int]:
        """Parse ``all``, ``5``, ``0,3,7``, ``10-19`` or ``-1`` (last) into sorted layer ids."""
        if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
            return list(range(self.n_layers))
        if isinstance(spec, (list, tuple)):
            items = [str(x) for x in spec]
        else:
            items = [s.strip() for s in str(spec).split(",") if s.strip()]
        out: set[int] = set()
        for item in items:
            try:
                if "-" in item[1:]:
                    lo, hi = item.split("-", 1) if not item.startswith("-") else (item, item)
                    rng = range(int(lo), int(hi) + 1)
                else:
                    v = int(item)
                    rng = range(v + self.n_layers, v + self.n_layers + 1) if v < 0 else range(v, v + 1)
            except ValueError:
                raise HeadgameError(
                    f"--layers '{spec}' is not understood; use all, a number, a list like 0,3,7 or a range like 10-19"
                ) from None
            for layer in rng:
                if not 0 <= layer < self.n_layers:
                    raise HeadgameError(
                        f"--layers {item} is out of range: the model has {self.n_layers} layers (0-based); "
                        f"use values in 0..{self.n_layers - 1}"
                    )
                out.add(layer)
        return sorted(out)
