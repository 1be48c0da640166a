"""The value every model loader returns: model, tokenizer, head layout and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headgame.models.layout import HeadLayout


@dataclass
class LoadedModel:
    """What :func:`~headgame.models.load.load_model` returns; unpacks as ``model, tokenizer, layout = ...``.

    ``info`` records where the model came from (spec, source, sha256 ``hash``, package, and for
    a pruned model the removed heads)."""

    model: Any
    tokenizer: Any
    layout: HeadLayout
    info: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.model, self.tokenizer, self.layout))
