"""Configuration of ``headgame train`` (spec game-lora §4-§5 defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headgame.config import ConfigMixin, positive_int
from headgame.errors import HeadgameError
from headgame.game.losses import PairWeighting
from headgame.game.schedule import Schedule

METHODS = ("ce", "game-lora", "disagreement")
ARBITRATIONS = ("nash_mtl", "sum")
BT_TARGETS = ("identity", "zero")
PRECISIONS = ("no", "bf16", "fp16")
# the paper regularises layer 19 of Qwen2.5-0.5B's 24 layers (spec §2, §12 #2)
PAPER_DESIGN_DEPTH = 19 / 24


def _layer_list(value: Any) -> list[int] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        try:
            return [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise HeadgameError(f"layer list '{value}' is not understood; use comma-separated integers like 16,19,22") from None
    return [int(v) for v in value]


@dataclass
class TrainConfig(ConfigMixin):
    """Configuration of ``headgame train``; every field is a CLI flag of the same name."""

    # --- model, data, output
    model: str = "smollm2-135m"
    """Base model spec (packaged name, .gguf, folder or hub id)."""
    data: str = "default"
    """Training text: 'default', 'gutenberg' (data dir), a file/folder/JSONL, hf:NAME."""
    text_field: str = "text"
    data_dir: str | None = None
    max_tokens: int = 20_000
    """Token budget of training + validation text (paper: 20M)."""
    seq_len: int = 256
    """Tokens per block (paper: 1024)."""
    batch_size: int = 4
    """Blocks per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    val_fraction: float = 0.05
    """Share of the packed blocks held out for validation loss (at least one block)."""
    val_every: int = 10
    """Validation loss every N optimizer steps (0 = only at the end)."""
    out: str = "train-out"
    seed: int = 42
    # --- method
    method: str = "game-lora"
    """ce, game-lora or disagreement."""
    design_layers: list[int] | None = None
    """Layers of G / the regularisers (default: the paper's relative depth 19/24, rounded)."""
    abt_layers: list[int] | None = None
    """Barlow-Twins layers (default: the design layers)."""
    ldb_layers: list[int] | None = None
    """Log-det-barrier layers (default: the design layers)."""
    no_ldb: bool = False
    no_abt: bool = False
    pair_weights: str = "adaptive"
    bt_target: str = "identity"
    arbitration: str = "nash_mtl"
    schedule: str = "three_phase"
    lambda_abt: float = 0.179
    lambda_ldb: float = 0.352
    warmup_end: float = 0.02
    cooldown_start: float = 0.879
    w_alpha: float = 0.929
    """Pair-weight floor α (spec §4.2)."""
    w_beta: float = 15.99
    w_tau: float = 0.0
    ldb_eps: float = 0.01
    ema_target: float = 20.0
    ema_rate: float = 0.1
    ema_mode: str = "s"
    """'s' (spec §4.3 default) or 'nd-lora' (the authors' earlier variant)."""
    rho_ema: float = 0.0
    """0 = ρ from the previous step; e.g. 0.9 = EMA of ρ (spec §3.2)."""
    nash_update_every: int = 1
    """Recompute the Nash-MTL weights every N steps (1 = the reference; others reuse α)."""
    disagreement_lambda: float = 1.0
    # --- LoRA and optimiser (spec §5)
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lr: float = 3e-4
    weight_decay: float = 0.1
    warmup_ratio: float = 0.02
    clip: float = 1.0
    mixed_precision: str = "no"
    # --- bookkeeping
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    merge: bool = False
    tensorboard: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("design_layers", "abt_layers", "ldb_layers"):
            setattr(self, name, _layer_list(getattr(self, name)))
        if self.method not in METHODS:
            raise HeadgameError(f"unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
        for name in ("max_tokens", "seq_len", "batch_size", "grad_accum", "lora_r", "nash_update_every", "keep_checkpoints"):
            positive_int(getattr(self, name), f"--{name.replace('_', '-')}", getattr(type(self), name))
        for name in ("lambda_abt", "lambda_ldb", "disagreement_lambda", "lr", "weight_decay", "clip", "ema_rate", "ldb_eps"):
            if getattr(self, name) < 0:
                raise HeadgameError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}; negative weights would reward what the method taxes")
        if not 0 < self.val_fraction < 1:
            raise HeadgameError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.rho_ema < 1:
            raise HeadgameError(f"--rho-ema must be in [0, 1), got {self.rho_ema}")
        if not 0 <= self.warmup_end <= self.cooldown_start <= 1:
            raise HeadgameError("phase boundaries must satisfy 0 <= --warmup-end <= --cooldown-start <= 1")
        checks = [
            ("pair_weights", [p.value for p in PairWeighting]),
            ("bt_target", list(BT_TARGETS)),
            ("arbitration", list(ARBITRATIONS)),
            ("schedule", [s.value for s in Schedule]),
            ("ema_mode", ["s", "nd-lora"]),
            ("mixed_precision", list(PRECISIONS)),
        ]
        for name, valid in checks:
            if getattr(self, name) not in valid:
                raise HeadgameError(f"--{name.replace('_', '-')} {getattr(self, name)} is not valid; choose one of {', '.join(valid)}")
        if self.method == "game-lora" and self.no_ldb and self.no_abt:
            raise HeadgameError("--no-ldb together with --no-abt leaves game-lora with cross-entropy only; use --method ce instead")
        if self.method != "game-lora":
            game_only = {
                "no_ldb": False, "no_abt": False, "pair_weights": "adaptive", "bt_target": "identity",
                "arbitration": "nash_mtl", "abt_layers": None, "ldb_layers": None,
            }
            changed = [k for k, v in game_only.items() if getattr(self, k) != v]
            if changed:
                flags = ", ".join("--" + k.replace("_", "-") for k in changed)
                raise HeadgameError(f"{flags} only apply to --method game-lora (got --method {self.method}); drop them or switch method")

    NOT_IDENTITY = frozenset({"out", "checkpoint_every", "keep_checkpoints", "merge", "tensorboard", "extra", "val_every"})


def default_design_layer(n_layers: int) -> int:
    """The paper's relative depth (layer 19 of 24) rounded for a model with ``n_layers``."""
    return min(n_layers - 1, max(0, round(PAPER_DESIGN_DEPTH * n_layers)))
