"""headgame: attention heads as players in a game.

Public entry points are imported lazily so that ``import headgame`` stays cheap
(no torch import until a model is needed). Each command is a function taking a config or its
fields and returning a :class:`Result` (see :mod:`headgame.api`)::

    import headgame
    result = headgame.analyze(model="smollm2-135m", max_tokens=4096, out="A")
"""

from __future__ import annotations

from headgame.version import __version__

__all__ = ["__version__", "HeadgameError", "load_model", "HeadLayout", "HeadTap",
           "analyze", "train", "evaluate", "fep", "prune", "reproduce", "Result"]

_COMMANDS = ("analyze", "train", "evaluate", "fep", "prune", "reproduce")


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
    if name in _COMMANDS:  # the command package, callable: headgame.analyze(model=..., out=...)
        import importlib

        return importlib.import_module(f"headgame.{name}")
    if name == "Result":
        from headgame.runs import Result

        return Result
    if name == "HeadTap":
        from headgame.models.tap import HeadTap

        return HeadTap
    raise AttributeError(f"module 'headgame' has no attribute {name!r}")
