"""Where the heads live in each supported architecture.

A :class:`HeadLayout` knows the number of layers, query heads, KV heads and head dim of a
model, and how to reach each layer's attention module, its output projection and each head's
slice W_O^(i) of that projection (docs/formulas.md#head-slices). All per-head code goes through it; what
differs between architectures is asked of the layout's :class:`Family` (``models/families/``,
one module per family), so adding an architecture means adding one family module.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headgame.errors import HeadgameError
from headgame.models.families import Family, family_for_model_type, get_family, get_path, supported_model_types

__all__ = ["Family", "HeadLayout", "fit_seq_len", "parse_layers", "supported_model_types"]

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
        weight = self.o_proj_weight(model, layer)  # [d, H_l*dh]; H_l < H in an unevenly pruned layer
        d = weight.shape[0]
        # [d, H_l*dh] -> [d, H_l, dh] -> [H_l, d, dh]
        return weight.reshape(d, weight.shape[1] // self.head_dim, self.head_dim).permute(1, 0, 2)

    def heads_in(self, model: "nn.Module", layer: int) -> int:
        """Query heads ``layer`` of ``model`` actually has: ``n_heads`` unless an uneven pruning
        cut it (then the config still names the unpruned count)."""
        mod = self.o_proj(model, layer)
        weight = getattr(mod, "base_layer", mod).weight
        width = weight.shape[0] if self.o_proj_kind == "conv1d" else weight.shape[1]
        return int(width) // self.head_dim

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

    def parse_layers(self, spec: str | list[int] | None, flag: str = "--layers") -> list[int]:
        """Sorted layer ids of ``spec`` for this model (see :func:`parse_layers`)."""
        return parse_layers(spec, self.n_layers, flag=flag)  # type: ignore[return-value]


_LAYER_SYNTAX = "all, a layer like 5 (or -1, the last), a list like 0,3,7 or a range like 10-19"


def _layer_items(spec: str | int | list[int] | tuple[int, ...], flag: str) -> list[tuple[str, int, int]]:
    """(written item, first, last) per comma-separated item; a single layer has first == last."""
    if isinstance(spec, bool):
        raise HeadgameError(f"{flag} {spec!r} is not understood; use {_LAYER_SYNTAX}")
    if isinstance(spec, int):
        return [(str(spec), spec, spec)]
    if isinstance(spec, (list, tuple)):
        if not spec or not all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
            raise HeadgameError(f"{flag} {list(spec)!r} is not a list of layers; use {_LAYER_SYNTAX}")
        return [(str(v), v, v) for v in spec]
    items = []
    for item in (s.strip() for s in str(spec).split(",")):
        m = _ITEM.fullmatch(item)
        if not item:
            raise HeadgameError(f"{flag} '{spec}' has an empty item; write the layers without empty commas, e.g. 0,3,7")
        if m is None:
            raise HeadgameError(f"{flag} '{spec}' is not understood ('{item}'); use {_LAYER_SYNTAX}")
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        if (lo < 0) != (hi < 0):
            raise HeadgameError(f"{flag} {item} mixes a layer counted from the end with one counted from 0; "
                                "write both ends the same way, e.g. 2-5 or -3--1")
        if lo > hi:
            raise HeadgameError(f"{flag} {item} is a reversed range; write {m.group(2)}-{m.group(1)}")
        items.append((item, lo, hi))
    return items


def parse_layers(spec: str | int | list[int] | None, n_layers: int | None = None, *, flag: str = "--layers",
                 ordered: bool = False) -> list[int] | None:
    """The one parser of layer flags: ``all``, ``5``, ``0,3,7``, ``10-19``; negative layers count
    from the end, Python style (``-1`` is the last layer, ``-3--1`` the last three).

    With ``n_layers`` (the model is loaded) returns the layer ids, sorted and unique, or in the
    written order with ``ordered``; every layer must exist. Without it (a config's
    ``__post_init__``) only the syntax is checked and the written layers are returned, ranges
    expanded, or None for ``all``. ``None`` means all layers; an empty text is refused.
    """
    if spec is None:
        return None if n_layers is None else list(range(n_layers))
    if isinstance(spec, str) and not spec.strip():
        raise HeadgameError(f"{flag} is empty; pass {_LAYER_SYNTAX}")
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return None if n_layers is None else list(range(n_layers))
    items = _layer_items(spec, flag)
    if n_layers is None:
        return [layer for _, lo, hi in items for layer in range(lo, hi + 1)]
    out: list[int] = []
    for item, lo, hi in items:
        for layer in (lo, hi):
            if not -n_layers <= layer < n_layers:
                raise HeadgameError(
                    f"{flag} {item} is out of range: the model has {n_layers} layers (0..{n_layers - 1}, or "
                    f"-{n_layers}..-1 from the end); use values in 0..{n_layers - 1}"
                )
        first, last = lo % n_layers, hi % n_layers
        out += [layer for layer in range(first, last + 1) if layer not in out]
    return out if ordered else sorted(out)


_ITEM = re.compile(r"(-?\d+)(?:\s*-\s*(-?\d+))?")


def fit_seq_len(requested: int | None, default: int, max_positions: int | None,
                flag: str = "--seq-len") -> tuple[int, str | None]:
    """The sequence length of a run and the note to print when it was fitted to the model.

    Not given (None): ``default``, or the model's maximum positions when that is smaller (the tiny
    models have 128). Given: kept, and an error when the model cannot take it.
    """
    if requested is None:
        if max_positions and default > max_positions:
            return max_positions, (f"{flag} not given: using {max_positions}, the model's maximum positions "
                                   f"(the default {default} does not fit)")
        return default, None
    if max_positions and requested > max_positions:
        raise HeadgameError(f"{flag} {requested} exceeds the model's maximum of {max_positions} positions; "
                            f"use {flag} {max_positions} or less")
    return requested, None
