"""headgame: attention heads as players in a game.

Public entry points are imported lazily so that ``import headgame`` stays cheap
(no torch import until a model is needed).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "HeadgameError", "load_model", "HeadLayout", "HeadTap"]


def __getattr__(name: str):
    if name == "HeadgameError":
        from headgame.errors import HeadgameError

        return HeadgameError
    if name == "load_model":
        from headgame.models.load import load_model

        return load_model
    if name == "HeadLayout":
        from headgame.models.layout import HeadLayout

        return HeadLayout
    if name == "HeadTap":
        from headgame.models.tap import HeadTap

        return HeadTap
    raise AttributeError(f"module 'headgame' has no attribute {name!r}")
