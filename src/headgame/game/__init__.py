"""Pure game maths on attention heads: coupling, GAME-LoRA losses, redundancy, coalitions.

Names are re-exported lazily so that ``import headgame.game`` does not import torch or
scikit-learn until a function is used (docs/formulas.md#head-coupling).
"""

from __future__ import annotations

import importlib
from typing import Any

# The one list of re-exported names: name -> submodule that defines it.
_EXPORTS: dict[str, str] = {
    # coupling (docs/formulas.md#head-coupling)
    "weight_coupling": "coupling",
    "cosine_from_gram": "coupling",
    "GradientGram": "coupling",
    "interaction_matrix": "coupling",
    "gamma": "coupling",
    "gamma_fro": "coupling",
    "gamma_rms": "coupling",
    "gamma_abs": "coupling",
    "poa_proxy": "coupling",
    # the PoA bound with measured constants (docs/formulas.md#poa-bound)
    "poa_bound": "poa",
    # losses (docs/formulas.md#training-objective)
    "PairWeighting": "losses",
    "log_det_barrier": "losses",
    "abt_pair_weights": "losses",
    "abt_loss": "losses",
    # redundancy (docs/formulas.md#cross-correlation)
    "OutputMoments": "redundancy",
    "cross_correlation": "redundancy",
    "redundancy_stats": "redundancy",
    # coalitions (docs/formulas.md#coalitions)
    "find_coalitions": "coalitions",
    "selective_coordination": "coalitions",
    "selective_coordination_change": "coalitions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
