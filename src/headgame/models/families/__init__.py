"""The registry of architecture families: one module per family, one name per family.

A model is matched to its family by its config's ``model_type``; every per-architecture
question (where the heads live, how to prune them, what LoRA adapts, what a forward costs,
which auto class loads it, which tiny test models exist) is asked of the :class:`Family`.
Adding an architecture means adding one module here and one line to the list below.
"""

from __future__ import annotations

from headgame.models.families import bert, falcon, gpt2, gpt_neox, llama, opt, phi3
from headgame.models.families.base import Family, HeadDims, LayerCut, TinyBuilder, TinyTokens, get_path
from headgame.registry import Registry

__all__ = [
    "FAMILIES", "Family", "HeadDims", "LayerCut", "TinyBuilder", "TinyTokens", "describe_families",
    "family_for_model_type", "get_family", "get_path", "supported_model_types", "tiny_builders",
]

FAMILIES: Registry[Family] = Registry("model family", "family")
for _module in (llama, gpt2, bert, gpt_neox, opt, phi3, falcon):
    FAMILIES.add(_module.FAMILY.name, _module.FAMILY)


def _by_model_type() -> dict[str, Family]:
    out: dict[str, Family] = {}
    for fam in FAMILIES.values():
        for model_type in fam.model_types:
            if model_type in out:
                raise ValueError(f"model type '{model_type}' is claimed by the {out[model_type].name} and {fam.name} families")
            out[model_type] = fam
    return out


_BY_TYPE = _by_model_type()


def get_family(name: str) -> Family:
    """The family registered as ``name`` (a did-you-mean error otherwise)."""
    return FAMILIES.get(name)


def family_for_model_type(model_type: str) -> Family | None:
    """The family covering a config's ``model_type``, or None when no family does."""
    return _BY_TYPE.get(model_type)


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def tiny_builders() -> dict[str, TinyBuilder]:
    """Every family's tiny random test models by name, in registration order."""
    out: dict[str, TinyBuilder] = {}
    for fam in FAMILIES.values():
        for name, build in fam.tiny:
            if name in out:
                raise ValueError(f"tiny model '{name}' is registered twice")
            out[name] = build
    return out


def describe_families() -> list[str]:
    """One line per family for ``headgame models``: its name, what it covers, its model types."""
    return [f"{fam.name:10s} {fam.description}; model types: {', '.join(fam.model_types)}" for fam in FAMILIES.values()]
