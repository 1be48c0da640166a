"""One dataclass config per command, validated on construction, saved beside every artefact."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, flag: str, example: int) -> None:
    """A count flag must be an integer > 0 (a bool is not a count)."""
    if not _is_int(value) or value <= 0:
        raise HeadgameError(f"{flag} must be a positive integer, got {value!r}; pass e.g. {flag} {example}")


def nonneg_int(value: Any, flag: str, example: int, zero: str = "") -> None:
    """A count flag that may be 0; ``zero`` says what 0 means (e.g. "0 = never")."""
    if not _is_int(value) or value < 0:
        meaning = f" ({zero})" if zero else ""
        raise HeadgameError(f"{flag} must be a non-negative integer{meaning}, got {value!r}; pass e.g. {flag} {example}")


def int_in_range(value: Any, flag: str, lo: int, hi: int, example: int, why: str = "") -> None:
    """An integer flag in ``lo..hi`` (both included); ``why`` says where the bounds come from."""
    if not _is_int(value) or not lo <= value <= hi:
        reason = f" ({why})" if why else ""
        raise HeadgameError(f"{flag} must be an integer in {lo}..{hi}{reason}, got {value!r}; pass e.g. {flag} {example}")


def check_seed(value: Any, flag: str = "--seed") -> None:
    """Seeds feed torch, numpy and random: an integer in 0..2^32 - 1."""
    int_in_range(value, flag, 0, 2**32 - 1, 42, "numpy accepts no other seed")


def finite_float(value: Any, flag: str, example: float) -> float:
    """A number flag must be finite: nan and inf are never a meant setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HeadgameError(f"{flag} must be a finite number, got {value!r}; pass e.g. {flag} {example}")
    return float(value)


def in_range(value: Any, flag: str, lo: float | None = None, hi: float | None = None, *, example: float,
             lo_open: bool = False, hi_open: bool = False, why: str = "") -> float:
    """A finite number flag within the interval from ``lo`` to ``hi`` (None: unbounded; ``*_open``:
    the bound itself excluded); ``why`` names what the number is, for the error."""
    x = finite_float(value, flag, example)
    low_ok = lo is None or (x > lo if lo_open else x >= lo)
    high_ok = hi is None or (x < hi if hi_open else x <= hi)
    if low_ok and high_ok:
        return x
    if hi is None:
        interval = f"{'>' if lo_open else '>='} {lo:g}"
    elif lo is None:
        interval = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        interval = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    reason = f" ({why})" if why else ""
    raise HeadgameError(f"{flag} must be {interval}{reason}, got {value!r}; pass e.g. {flag} {example}")


def nonempty(value: Any, flag: str, example: str, *, optional: bool = False) -> None:
    """A text flag must not be empty (None allowed when ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise HeadgameError(f"{flag} must not be empty, got {value!r}; pass e.g. {flag} {example}")


def check_out_path(out: Any, flag: str = "--out") -> None:
    """``out`` is, or can be created as, a writable folder; checked without creating anything, so a
    run that fails later leaves no folder behind (the runner creates it once every check passed)."""
    nonempty(os.fspath(out) if isinstance(out, os.PathLike) else out, flag, "run-out")
    path = Path(out).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise HeadgameError(f"output folder {path} is not writable ({probe} is a file, not a folder); choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise HeadgameError(f"output folder {path} is not writable ({probe} is read-only); choose another {flag}")


def check_field_types(config: Any) -> None:
    """Every field of a config dataclass holds its annotated type: bool switches are bools, texts
    are strings, counts are integers and every number is finite (nan and inf are never meant)."""
    for f in fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        optional = kind.endswith(" | None")
        if optional and value is None:
            continue
        kind = kind.removesuffix(" | None")
        flag = f"--{f.name.replace('_', '-')}"
        if kind == "bool" and not isinstance(value, bool):
            raise HeadgameError(f"{f.name} must be true or false, got {value!r}; set it to true or false")
        if kind == "str" and not isinstance(value, str):
            raise HeadgameError(f"{flag} must be text, got {value!r}; pass e.g. {flag} {f.default}")
        if kind == "int" and not _is_int(value):
            raise HeadgameError(f"{flag} must be an integer, got {value!r}; pass e.g. {flag} {f.default}")
        if kind == "float":
            finite_float(value, flag, f.default)
        if kind.startswith("dict") and not isinstance(value, dict):
            raise HeadgameError(f"{f.name} must be a mapping, got {type(value).__name__}; pass a dict (or leave it out)")


def warn(message: str) -> None:
    """A setting that is legal but probably not meant: one ``warning:`` line on stderr."""
    print(f"warning: {' '.join(message.split())}", file=sys.stderr)



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


DEFAULT_SEQ_LEN = 256
"""--seq-len when not given (analyze, train, fep), lowered to a model's maximum positions when that is smaller."""

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


DEVICE_HELP = ("Device to run on: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N.")


def check_device(value: Any, flag: str = "--device") -> None:
    """The spelling of a device flag: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (checked without torch)."""
    ok = isinstance(value, str) and (value in ("auto", "cpu", "cuda")
                                     or value.startswith("cuda:") and value[5:].isdigit())
    if not ok:
        raise HeadgameError(f"{flag} {value!r} is not a device; pass {flag} auto, cpu, cuda or cuda:0")


def resolve_device(value: str = "auto", flag: str = "--device"):
    """The ``torch.device`` a device flag names: ``auto`` is cuda when torch sees a GPU, else cpu.

    Asking for cuda where torch sees none (a CPU build of torch, no driver, CUDA_VISIBLE_DEVICES
    empty) or for a GPU index that does not exist is a one-line :class:`HeadgameError`."""
    check_device(value, flag)
    import torch

    if value == "auto":
        value = "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but no GPU is visible"
        raise HeadgameError(f"{flag} {value} asks for a GPU but torch {torch.__version__} is {build}; "
                            f"pass {flag} cpu (or auto), or install a CUDA build of torch on a machine with a GPU")
    index = int(value[5:]) if ":" in value else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise HeadgameError(f"{flag} {value} names GPU {index} but only {count} GPU(s) are visible; pass {flag} cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def with_values(config: Any, **changes: Any) -> Any:
    """A copy of ``config`` with ``changes`` (values the caller has checked, e.g. a --seq-len fitted
    to the model), without running ``__post_init__`` again, so its warnings are not repeated."""
    import copy

    new = copy.copy(config)
    for name, value in changes.items():
        setattr(new, name, value)
    return new
