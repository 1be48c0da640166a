"""Configuration of ``headgame fep``: one validated dataclass, saved beside the results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headgame.config import check_device, ConfigMixin, check_dtype, check_field_types, check_seed, in_range, nonempty, nonneg_int, positive_int, warn
from headgame.errors import HeadgameError

TABLE_FORMATS = ("csv", "parquet")


@dataclass
class FepConfig(ConfigMixin):
    """Configuration of ``headgame fep`` (docs/formulas.md#gt-fep)."""

    model: str = "smollm2-135m"
    """Model spec: packaged name, .gguf file, local folder or hub id."""
    data: str = "auto"
    """Text: 'gsm8k' (test problems, one sequence each), 'auto' (gsm8k when the data directory has it, else the packaged corpus), or any analyze source."""
    text_field: str = "text"
    """Field holding the text in JSON/JSONL records."""
    data_dir: str | None = None
    """Folder of the public data files (else $HEADGAME_DATA_DIR)."""
    gsm8k_format: str = "qa"
    """GSM8K text format: qa ("Question: …\\nAnswer: …"), answer or question (docs/formulas.md#symbols)."""
    max_tokens: int = 16384
    """Token budget: sequences are added until their non-pad tokens reach it."""
    seq_len: int | None = None
    """Tokens per sequence (GSM8K problems are truncated to it; other sources are packed into blocks of it); default 256,
    or the model's maximum positions when that is smaller."""
    batch_size: int = 4
    """Sequences per forward pass."""
    layers: str = "all"
    """Layers to analyse: all, 5, 0,3,7 or 10-19; negative layers count from the end (-1 is the last)."""
    alphabet: str = "absolute"
    """Symbol of a head: absolute argmax key index, or relative offset q − k (docs/formulas.md#symbols)."""
    miller_madow: bool = False
    """Add the Miller–Madow correction (m − 1)/(2 n ln 2) to every entropy."""
    bootstrap: int = 200
    """Bootstrap resamples over sequences for the CIs of pair/triple dividends (0 = none)."""
    ci_method: str = "basic"
    """Bootstrap interval: basic (reflected about the estimate, correcting the downward shift of
    resampled plug-in entropies) or percentile (docs/formulas.md#bootstrap)."""
    full_max_heads: int = 12
    """Compute all 2^H subset dividends for layers with at most this many heads."""
    beta: float = 1.0
    """Precision β (bits⁻¹) of the Gibbs distributions (docs/formulas.md#gibbs)."""
    mcmc_steps: int = 20000
    """Metropolis steps over coalition structures per layer (0 = skip)."""
    mcmc_burn_in: int = 2000
    """Discarded initial steps of the chain."""
    fraction: float = 0.2
    """Share of heads a hypothetical fep pruning removes, for the ε-Nash report (docs/formulas.md#epsilon-nash)."""
    per_layer: bool = False
    """Rank within each layer instead of globally for the ε-Nash report."""
    ablation_tokens: int | None = None
    """Tokens for the per-head ablation ΔNLL behind the Spearman check (0 = skip). It costs one forward pass over them
    per head (L·H + 1 in all), so the default follows the run: min(256, max_tokens // 16)."""
    table_format: str = "csv"
    """Dividends table format: csv or parquet (needs pyarrow)."""
    out: str = "fep-out"
    """Output folder."""
    checkpoint_every: int = 8
    """Save the symbols collected so far every N batches (0 = once all are collected); the finished layers and ablation
    layers are saved too, and --resume continues from the last save."""
    seed: int = 42
    """Seed for sampling GSM8K problems, the bootstrap and the MCMC."""
    dtype: str = "float32"
    """Model dtype (docs/formulas.md#symbols: float32 for attention extraction)."""
    device: str = "auto"
    """Device to run on: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N."""
    trust_remote_code: bool = False
    """Allow custom modelling code from a hub repository."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the config."""

    def __post_init__(self) -> None:
        from headgame.models.layout import parse_layers

        check_field_types(self)
        for name, example in (("model", "smollm2-135m"), ("data", "auto"), ("text_field", "text"), ("out", "fep-out")):
            nonempty(getattr(self, name), f"--{name.replace('_', '-')}", example)
        nonempty(self.data_dir, "--data-dir", "DIR", optional=True)
        positive_int(self.max_tokens, "--max-tokens", 16384)
        if self.seq_len is not None:
            positive_int(self.seq_len, "--seq-len", 256)
            if self.seq_len < 2:
                raise HeadgameError("--seq-len must be at least 2; pass e.g. --seq-len 256")
        positive_int(self.batch_size, "--batch-size", 4)
        parse_layers(self.layers)  # the syntax; the layer count is checked once the model is loaded
        check_seed(self.seed)
        nonneg_int(self.mcmc_burn_in, "--mcmc-burn-in", 2000)
        if self.ablation_tokens is not None:
            nonneg_int(self.ablation_tokens, "--ablation-tokens", 256, "0 skips the ablation check")
        nonneg_int(self.bootstrap, "--bootstrap", 200, "0 skips the intervals")
        if 0 < self.bootstrap < 50:
            warn(f"--bootstrap {self.bootstrap} resamples give rough 95% intervals; use at least 200 (or 0 for none)")
        nonneg_int(self.mcmc_steps, "--mcmc-steps", 20000)
        nonneg_int(self.full_max_heads, "--full-max-heads", 12)
        nonneg_int(self.checkpoint_every, "--checkpoint-every", 8)
        if self.full_max_heads > 16:
            raise HeadgameError(f"--full-max-heads {self.full_max_heads} would enumerate 2^{self.full_max_heads} subsets per layer; use at most 16")
        if self.mcmc_steps and self.mcmc_burn_in >= self.mcmc_steps:
            raise HeadgameError(f"--mcmc-burn-in {self.mcmc_burn_in} must be below --mcmc-steps {self.mcmc_steps}; e.g. 2000 of 20000")
        if self.alphabet not in ("absolute", "relative"):
            raise HeadgameError(f"--alphabet {self.alphabet} is not known; use absolute or relative")
        if self.ci_method not in ("basic", "percentile"):
            raise HeadgameError(f"--ci-method {self.ci_method} is not known; use basic or percentile")
        if self.table_format not in TABLE_FORMATS:
            raise HeadgameError(f"--format {self.table_format} is not known; use csv or parquet")
        if self.gsm8k_format not in ("qa", "answer", "question"):
            raise HeadgameError(f"--gsm8k-format {self.gsm8k_format} is not known; use qa, answer or question")
        in_range(self.beta, "--beta", 0, lo_open=True, example=1.0, why="the precision of the Gibbs distributions, in 1/bits")
        from headgame.measure.select import check_fraction

        check_fraction(self.fraction)
        check_dtype(self.dtype)
        check_device(self.device)

    @property
    def ablation_budget(self) -> int:
        """--ablation-tokens, or its default for this run's --max-tokens."""
        return self.ablation_tokens if self.ablation_tokens is not None else min(256, self.max_tokens // 16)

    NOT_IDENTITY = frozenset({"device", "out", "checkpoint_every", "extra"})
