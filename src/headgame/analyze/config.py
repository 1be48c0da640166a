"""Configuration of ``headgame analyze``: one validated dataclass, saved beside the results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headgame.config import (check_device, DEFAULT_SEQ_LEN, ConfigMixin, check_dtype, check_field_types, check_seed, nonempty, nonneg_int,
                             positive_int)
from headgame.errors import HeadgameError


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
    seq_len: int | None = None
    """Tokens per block (default 256, or the model's maximum positions when that is smaller)."""
    batch_size: int = 4
    """Blocks per forward/backward pass."""
    layers: str = "all"
    """Layers to analyse: all, 5, 0,3,7 or 10-19; negative layers count from the end (-1 is the last)."""
    out: str = "analysis-out"
    """Output folder (analysis.json, config.yaml, PNGs, report.html)."""
    redundancy: bool = True
    """Also accumulate the z-scored head cross-correlations (docs/formulas.md#redundancy)."""
    heatmap_layers: str | None = None
    """Layers drawn as G heatmaps (default: first, last, middle, max-Γ and min-Γ layers)."""
    seed: int = 42
    """Seed for masked-LM masking and coalition clustering."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16 (statistics always accumulate in float64)."""
    device: str = "auto"
    """Device to run on: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N."""
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
        from headgame.models.layout import parse_layers

        check_field_types(self)
        for name, example in (("model", "smollm2-135m"), ("data", "default"), ("text_field", "text"), ("out", "analysis-out")):
            nonempty(getattr(self, name), f"--{name.replace('_', '-')}", example)
        nonempty(self.data_dir, "--data-dir", "DIR", optional=True)
        nonempty(self.adapter, "--adapter", "DIR", optional=True)
        positive_int(self.max_tokens, "--max-tokens", 16384)
        if self.seq_len is not None:
            positive_int(self.seq_len, "--seq-len", DEFAULT_SEQ_LEN)
            if self.seq_len < 2:
                raise HeadgameError("--seq-len must be at least 2 (next-token prediction needs two tokens); pass e.g. --seq-len 256")
        positive_int(self.batch_size, "--batch-size", 4)
        parse_layers(self.layers)  # the syntax; the layer count is checked once the model is loaded
        if self.heatmap_layers is not None:
            parse_layers(self.heatmap_layers, flag="--heatmap-layers")
        check_seed(self.seed)
        check_dtype(self.dtype)
        check_device(self.device)
        nonneg_int(self.checkpoint_every, "--checkpoint-every", 8, "0 disables checkpoints")
        if self.merge_adapter and not self.adapter:
            raise HeadgameError("--merge-adapter needs --adapter DIR; pass the adapter folder to merge, or drop --merge-adapter")

    NOT_IDENTITY = frozenset({"device", "out", "checkpoint_every", "extra", "heatmap_layers"})
