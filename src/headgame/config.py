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


@dataclass
class AnalyzeConfig(ConfigMixin):
    """Configuration of ``headgame analyze``."""

    model: str = "smollm2-135m"
    """Model spec: packaged name, .gguf file, local folder or hub id."""
    data: str = "default"
    """Text source: 'default' (packaged corpus), file, folder, JSONL, 'gutenberg', hf:NAME."""
    text_field: str = "text"
    """Field holding the text in JSON/JSONL records."""
    data_dir: str | None = None
    """Folder of the public benchmark files (else $HEADGAME_DATA_DIR)."""
    max_tokens: int = 16384
    """Token budget; the corpus is packed into max_tokens // seq_len blocks."""
    seq_len: int = 256
    """Tokens per block."""
    batch_size: int = 4
    """Blocks per forward/backward pass."""
    layers: str = "all"
    """Layers to analyse: all, 5, 0,3,7 or 10-19."""
    out: str = "analysis-out"
    """Output folder (analysis.json, config.yaml, PNGs, report.html)."""
    redundancy: bool = True
    """Also accumulate the z-scored head cross-correlations (spec game-lora §4.2)."""
    heatmap_layers: str | None = None
    """Layers drawn as G heatmaps (default: first, last, middle, max-Γ and min-Γ layers)."""
    seed: int = 0
    """Seed for masked-LM masking and coalition clustering."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16 (statistics always accumulate in float64)."""
    trust_remote_code: bool = False
    """Allow custom modelling code from a hub repository (off unless asked)."""
    checkpoint_every: int = 8
    """Save the accumulators every N batches (0 = never); --resume continues from them."""
    adapter: str | None = None
    """A peft adapter folder (e.g. from headgame train) applied to the model."""
    merge_adapter: bool = False
    """Merge the adapter into the weights before analysing."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the config."""

    def __post_init__(self) -> None:
        positive_int(self.max_tokens, "--max-tokens", 16384)
        positive_int(self.seq_len, "--seq-len", 256)
        positive_int(self.batch_size, "--batch-size", 4)
        if self.seq_len < 2:
            raise HeadgameError("--seq-len must be at least 2 (next-token prediction needs two tokens); pass e.g. --seq-len 256")
        if self.checkpoint_every < 0:
            raise HeadgameError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}; use 0 to disable checkpoints")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise HeadgameError(f"--dtype {self.dtype} is not supported; use float32, bfloat16 or float16")

    NOT_IDENTITY = frozenset({"out", "checkpoint_every", "extra", "heatmap_layers"})
