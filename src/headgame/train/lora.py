"""LoRA set-up with peft and the parameter groups the GAME-LoRA gradients reach."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from headgame.errors import HeadgameError
from headgame.models.layout import HeadLayout

def add_lora(model: nn.Module, layout: HeadLayout, *, r: int, alpha: float, dropout: float, seed: int) -> nn.Module:
    """Wrap ``model`` with LoRA on the q/k/v/o projections of every attention layer
    (docs/formulas.md#lora); the family names them (``Family.lora_targets``)."""
    from peft import LoraConfig, get_peft_model

    from headgame.models.families import FAMILIES

    fam = layout.family_def
    if fam.lora_targets is None:
        trainable = ", ".join(f.name for f in FAMILIES.values() if f.lora_targets is not None)
        raise HeadgameError(
            f"headgame train supports causal language models (families: {trainable}); {layout.architecture} is a "
            f"{fam.name}-family encoder; pick a causal model"
        )
    targets = fam.lora_targets if isinstance(fam.lora_targets, str) else list(fam.lora_targets)
    check_rank(r, max_rank(model, targets))
    targets = _without_gathers(model, targets)
    torch.manual_seed(seed)  # LoRA A is initialised randomly; make it reproducible
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=targets, fan_in_fan_out=fam.lora_fan_in_fan_out,
    )
    return get_peft_model(model, config)


def _adapted(name: str, targets: str | list[str]) -> bool:
    """Whether peft adapts module ``name`` under ``targets`` (a regex matched against the full
    module name, or module-name suffixes)."""
    import re

    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _without_gathers(model: nn.Module, targets: str | list[str]) -> str | list[str]:
    """``targets`` less the projections of unevenly pruned layers that hand out their output
    blocks by index (``HeadGatherLinear``, models/surgery.py): LoRA's update of such a module
    would be added ungathered, in the wrong shape, so those modules get no adapter."""
    from headgame.models.families.slicing import HeadGatherLinear

    modules = list(model.named_modules())
    if not any(isinstance(m, HeadGatherLinear) for _, m in modules):
        return targets
    return [name for name, m in modules if _adapted(name, targets) and not isinstance(m, HeadGatherLinear)
            and getattr(getattr(m, "weight", None), "ndim", 0) == 2]


LARGE_RANK = 256
"""Ranks above this are legal but rarely meant (a warning): adapters grow linearly with r."""


def max_rank(model: nn.Module, targets: str | list[str]) -> int:
    """The smallest dimension of the weights LoRA adapts: a rank above it adds nothing but size.
    ``targets`` as peft reads them: a regex matched against the full module name, or module-name
    suffixes."""
    dims = [min(m.weight.shape) for name, m in model.named_modules()
            if _adapted(name, targets) and getattr(getattr(m, "weight", None), "ndim", 0) == 2]
    return min(dims) if dims else 0


def check_rank(r: int, limit: int) -> None:
    if limit and r > limit:
        raise HeadgameError(f"--lora-r {r} exceeds the smallest dimension LoRA adapts in this model ({limit}); "
                            f"use --lora-r {limit} or less (16 is usual)")
    if r > LARGE_RANK:
        from headgame.config import warn

        warn(f"--lora-r {r} is unusually large (the adapter grows with r; 8 to 64 is usual)")


@dataclass
class ParamGroups:
    """Trainable (LoRA) parameters, in one fixed order, and the subsets each loss reaches."""

    params: list[nn.Parameter]
    names: list[str]
    by_layer: dict[int, list[int]]  # layer -> indices into params
    o_proj: dict[int, list[int]]  # layer -> indices of that layer's o_proj adapter

    @property
    def n_elements(self) -> int:
        return sum(p.numel() for p in self.params)

    def ldb_indices(self, layers: list[int]) -> list[int]:
        """L_LDB depends on W_O^(i) only: the o_proj adapters of its layers (docs/formulas.md#ldb)."""
        return sorted({i for l in layers for i in self.o_proj[l]})

    def abt_indices(self, layers: list[int]) -> list[int]:
        """L_ABT reads the o_proj *input* of its layers: every adapter below the highest of them
        and the q/k/v adapters of that layer (its o_proj adapter is not reached)."""
        top = max(layers)
        below = [i for l in range(top) for i in self.by_layer[l]]
        own = [i for i in self.by_layer[top] if i not in set(self.o_proj[top])]
        return sorted(set(below + own))


def param_groups(model: nn.Module, layout: HeadLayout) -> ParamGroups:
    index_of: dict[int, int] = {}
    params, names = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            index_of[id(p)] = len(params)
            params.append(p)
            names.append(name)
    if not params:
        raise HeadgameError("the model has no trainable parameters after adding LoRA; check the target modules")
    by_layer: dict[int, list[int]] = {}
    o_proj: dict[int, list[int]] = {}
    for l, block in enumerate(layout.blocks(model)):
        by_layer[l] = [index_of[id(p)] for p in block.parameters() if id(p) in index_of]
        o_proj[l] = [index_of[id(p)] for p in layout.o_proj(model, l).parameters() if id(p) in index_of]
    return ParamGroups(params, names, by_layer, o_proj)
