"""Configuration of ``headgame train`` (docs/formulas.md#training-objective defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headgame.config import DTYPES, ConfigMixin, positive_int
from headgame.errors import HeadgameError
from headgame.game.losses import PairWeighting
from headgame.game.schedule import Schedule

ARBITRATIONS = ("nash_mtl", "sum")
BT_TARGETS = ("identity", "zero")
PRECISIONS = ("no", "bf16", "fp16")
# the paper regularises layer 19 of Qwen2.5-0.5B's 24 layers (docs/formulas.md#design-layer)
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
    """Base model: packaged name, .gguf file, model folder, hub id or tiny-*."""
    data: str = "default"
    """Training text: default, gutenberg (the data directory's corpus), a file, folder or JSONL, hf:NAME."""
    text_field: str = "text"
    """Field holding the text in JSON/JSONL records."""
    data_dir: str | None = None
    """Folder of the public data files (else $HEADGAME_DATA_DIR)."""
    max_tokens: int = 20_000
    """Token budget of training + validation text (the paper uses 20M)."""
    seq_len: int = 256
    """Tokens per block (the paper uses 1024)."""
    batch_size: int = 4
    """Blocks per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    val_fraction: float = 0.05
    """Share of the packed blocks held out for the validation loss (at least one block)."""
    val_every: int = 10
    """Validation loss every N optimizer steps (0 = only at the end)."""
    out: str = "train-out"
    """Output folder (adapter/, config.yaml, metrics.jsonl, summary.json, checkpoints/)."""
    seed: int = 42
    """Seed of the data split, LoRA initialisation, dropout and the batch order."""
    dtype: str = "float32"
    """Dtype the base model is loaded in: float32, bfloat16 or float16 (see --mixed-precision for autocast)."""
    trust_remote_code: bool = False
    """Allow custom modelling code from a hub repository."""
    # --- method
    method: str = "game-lora"
    """Training method: game-lora, ce (LoRA with cross-entropy only, the paper's baseline) or disagreement."""
    design_layers: list[int] | None = None
    """Layer(s) of G and the regularisers, e.g. 24 or 16,19,22 (default: the paper's relative depth 19/24)."""
    abt_layers: list[int] | None = None
    """Barlow-Twins layers (default: the design layers)."""
    ldb_layers: list[int] | None = None
    """Log-det-barrier layers (default: the design layers)."""
    no_ldb: bool = False
    """Drop the log-det barrier (ablation)."""
    no_abt: bool = False
    """Drop the adaptive Barlow-Twins loss (ablation)."""
    pair_weights: str = "adaptive"
    """Barlow-Twins pair weights: adaptive (w = α + (1 − α)·softplus(−β(G − τ))), uniform or inverse."""
    bt_target: str = "identity"
    """Barlow-Twins target of the cross-head correlation: identity or zero."""
    arbitration: str = "nash_mtl"
    """How task gradients combine: nash_mtl (the bargaining solution Mα = 1/α) or sum."""
    schedule: str = "three_phase"
    """λ schedule: three_phase (warm-up, full, cool-down) or constant."""
    lambda_abt: float = 0.179
    """Weight λ_ABT of the Barlow-Twins loss."""
    lambda_ldb: float = 0.352
    """Weight λ_LDB of the log-det barrier."""
    warmup_end: float = 0.02
    """End of the λ warm-up phase, as a share of the steps."""
    cooldown_start: float = 0.879
    """Start of the λ cool-down phase, as a share of the steps."""
    w_alpha: float = 0.929
    """Pair-weight floor α of the adaptive weights."""
    w_beta: float = 15.99
    """Pair-weight sharpness β of the adaptive weights."""
    w_tau: float = 0.0
    """Pair-weight offset τ of the adaptive weights."""
    ldb_eps: float = 0.01
    """Ridge ε of the barrier −log det(G + εI)."""
    ema_target: float = 20.0
    """Target value of the EMA-normalised Barlow-Twins loss."""
    ema_rate: float = 0.1
    """Rate of the Barlow-Twins EMA normaliser."""
    ema_mode: str = "s"
    """EMA normaliser variant: s (the default) or nd-lora (the authors' earlier variant)."""
    rho_ema: float = 0.0
    """0 = ρ from the previous step's exact CE gradient; e.g. 0.9 = an EMA of ρ."""
    nash_update_every: int = 1
    """Recompute the Nash-MTL weights every N steps, reusing them in between (1 = the reference)."""
    disagreement_lambda: float = 1.0
    """Weight of the disagreement regulariser (--method disagreement)."""
    # --- LoRA and optimiser
    lora_r: int = 16
    """LoRA rank on q/k/v/o of every layer."""
    lora_alpha: float = 32.0
    """LoRA scaling α (the update is scaled by α/r)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA input."""
    lr: float = 3e-4
    """AdamW learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    warmup_ratio: float = 0.02
    """Share of the steps of linear learning-rate warm-up before the cosine decay."""
    clip: float = 1.0
    """Gradient-norm clipping threshold."""
    mixed_precision: str = "no"
    """Autocast: no, bf16 or fp16 (G, eigvalsh, Barlow Twins and Nash-MTL stay fp32)."""
    # --- bookkeeping
    checkpoint_every: int = 20
    """Atomic checkpoint every N steps (and on SIGINT/SIGTERM)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest)."""
    save_merged: bool = False
    """Also write the adapter merged into the base weights to OUT/merged (safetensors)."""
    tensorboard: bool = False
    """Write TensorBoard logs (needs headgame[tensorboard])."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the config."""

    def __post_init__(self) -> None:
        for name in ("design_layers", "abt_layers", "ldb_layers"):
            setattr(self, name, _layer_list(getattr(self, name)))
        from headgame.train.methods import METHODS

        method = METHODS.get(self.method)  # unknown name: one line with the valid ones
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
            ("dtype", list(DTYPES)),
        ]
        for name, valid in checks:
            if getattr(self, name) not in valid:
                raise HeadgameError(f"--{name.replace('_', '-')} {getattr(self, name)} is not valid; choose one of {', '.join(valid)}")
        method.check(self)

    NOT_IDENTITY = frozenset({"out", "checkpoint_every", "keep_checkpoints", "save_merged", "tensorboard", "extra", "val_every"})


def default_design_layer(n_layers: int) -> int:
    """The paper's relative depth (layer 19 of 24) rounded for a model with ``n_layers``."""
    return min(n_layers - 1, max(0, round(PAPER_DESIGN_DEPTH * n_layers)))
