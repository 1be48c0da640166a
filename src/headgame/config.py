"""One dataclass config per command, validated on construction, saved beside every artefact."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError


def positive_int(value: Any, flag: str, example: int) -> None:
    """A count flag must be an integer > 0 (a bool is not a count)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise HeadgameError(f"{flag} must be a positive integer, got {value!r}; pass e.g. {flag} {example}")


def nonneg_int(value: Any, flag: str, example: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise HeadgameError(f"{flag} must be a non-negative integer, got {value!r}; pass e.g. {flag} {example}")


class ConfigMixin:
    """YAML/dict round trip and run identity for the dataclass configs of every command."""

    NOT_IDENTITY: frozenset[str] = frozenset()
    """Bookkeeping fields that may change between a run and its --resume."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise HeadgameError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
        return cls(**data)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path):
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def run_identity(self) -> dict[str, Any]:
        """Fields that must match for --resume to continue a run exactly."""
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_IDENTITY}


DTYPES = ("float32", "bfloat16", "float16")
"""Model dtypes every command accepts (statistics always accumulate in float32 or float64)."""


def check_choice(value: Any, flag: str, valid: tuple[str, ...] | list[str]) -> None:
    """A string flag must be one of ``valid``."""
    if value not in valid:
        raise HeadgameError(f"{flag} {value} is not valid; choose one of {', '.join(valid)}")


def check_dtype(value: Any) -> None:
    if value not in DTYPES:
        raise HeadgameError(f"--dtype {value} is not supported; use float32, bfloat16 or float16")


def torch_dtype(name: str):
    """The torch dtype called ``name`` (one of :data:`DTYPES`)."""
    check_dtype(name)
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
