"""Configuration of ``headgame train`` (docs/formulas.md#training-objective defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headgame.config import (DEFAULT_SEQ_LEN, check_device, DTYPES, ConfigMixin, check_field_types, check_seed, finite_float, in_range, nonempty, nonneg_int,
                             positive_int, warn)
from headgame.errors import HeadgameError
from headgame.game.losses import PairWeighting
from headgame.game.schedule import Schedule

ARBITRATIONS = ("nash_mtl", "sum")
NASH_GRADIENTS = ("parameters", "representation")
BT_TARGETS = ("identity", "zero")
PRECISIONS = ("no", "bf16", "fp16")
# the paper regularises layer 19 of Qwen2.5-0.5B's 24 layers (docs/formulas.md#design-layer)
PAPER_DESIGN_DEPTH = 19 / 24


def _layer_list(value: Any, flag: str) -> list[int] | None:
    """The layers written in a layer flag (the one parser, models/layout.py), in the written order;
    negative layers count from the end and are resolved once the model is loaded."""
    from headgame.models.layout import parse_layers

    if value is None or value == []:
        return None
    if isinstance(value, str) and not value.strip():
        raise HeadgameError(f"{flag} is empty; pass layers like 16,19,22 or 10-19, or leave the flag out for the default")
    if isinstance(value, str) and value.strip().lower() == "all":
        raise HeadgameError(f"{flag} takes explicit layers, not all; write a range such as 0-29 (or leave it out for the default)")
    return parse_layers(value, flag=flag)


@dataclass
class TrainConfig(ConfigMixin):
    """Configuration of ``headgame train``; every field is a CLI flag of the same name."""

    # --- model, data, output
    model: str = "smollm2-135m"
    """Base model: packaged name, .gguf file, model folder, hub id or tiny-*."""
    data: str = "default"
    """Training text: default, gutenberg (the data directory's corpus), a file, folder or JSONL, hf:NAME; JSONL with messages or prompt/completion records is chat data (one conversation per row, see --loss-on)."""
    text_field: str = "text"
    """Field holding the text in JSON/JSONL records."""
    loss_on: str = "assistant"
    """Tokens of chat data (JSONL with messages or prompt/completion records) that carry the loss: assistant (the assistant turns only) or all (every non-pad token); plain text always trains on every token."""
    data_dir: str | None = None
    """Folder of the public data files (else $HEADGAME_DATA_DIR)."""
    max_tokens: int = 20_000
    """Token budget of training + validation text (the paper uses 20M)."""
    seq_len: int | None = None
    """Tokens per block (default 256, or the model's maximum positions when that is smaller; the paper uses 1024)."""
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
    device: str = "auto"
    """Device to run on: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N."""
    compile: bool = False
    """torch.compile the model (inductor): every layer's MLP and norms; attention, where the head taps hook in, stays eager."""
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
    nash_gradients: str = "parameters"
    """Nash-MTL Gram from: parameters (exact task gradients on the LoRA weights, the reference) or representation (at the Barlow-Twins layer's input: one backward below it, docs/formulas.md#nash-representation)."""
    nash_calibrate_every: int = 10
    """With --nash-gradients representation: after every N representation steps, one exact step that takes the exact α and re-measures each task's backward gain (0 = only the first)."""
    nash_log_exact: bool = False
    """With --nash-gradients representation: also compute the exact α every step (one more backward below the layer) and log it as nash_alpha_exact."""
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
    """Gradient-norm clipping threshold (0 = no clipping)."""
    mixed_precision: str = "no"
    """Autocast: no, bf16 or fp16 (G, eigvalsh, Barlow Twins and Nash-MTL stay fp32)."""
    # --- bookkeeping
    checkpoint_every: int = 20
    """Atomic checkpoint every N steps (and on SIGINT/SIGTERM; 0 = only then)."""
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
            setattr(self, name, _layer_list(getattr(self, name), f"--{name.replace('_', '-')}"))
        from headgame.train.methods import METHODS

        check_field_types(self)
        method = METHODS.get(self.method)  # unknown name: one line with the valid ones
        for name, example in (("model", "smollm2-135m"), ("data", "default"), ("text_field", "text"), ("out", "train-out")):
            nonempty(getattr(self, name), f"--{name.replace('_', '-')}", example)
        nonempty(self.data_dir, "--data-dir", "DIR", optional=True)
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 2):
            raise HeadgameError(f"--seq-len must be an integer >= 2 (next-token prediction needs two tokens), got {self.seq_len!r}; pass e.g. --seq-len 256")
        for name in ("max_tokens", "batch_size", "grad_accum", "lora_r", "nash_update_every", "keep_checkpoints"):
            positive_int(getattr(self, name), f"--{name.replace('_', '-')}", getattr(type(self), name))
        nonneg_int(self.val_every, "--val-every", 10, "0 = only at the end")
        nonneg_int(self.nash_calibrate_every, "--nash-calibrate-every", 10, "0 = only the first step")
        nonneg_int(self.checkpoint_every, "--checkpoint-every", 20, "0 = only on SIGINT/SIGTERM")
        check_seed(self.seed)
        for name in ("lambda_abt", "lambda_ldb", "disagreement_lambda"):
            in_range(getattr(self, name), f"--{name.replace('_', '-')}", 0, example=getattr(type(self), name),
                     why="a loss weight; a negative one would reward what the method taxes")
        in_range(self.lr, "--lr", 0, lo_open=True, example=3e-4, why="the AdamW learning rate must be positive")
        if self.lr >= 0.1:
            warn(f"--lr {self.lr:g} is far above LoRA's usual 1e-4..1e-3; training will likely diverge")
        in_range(self.weight_decay, "--weight-decay", 0, example=0.1, why="AdamW weight decay; 0 disables it")
        in_range(self.clip, "--clip", 0, example=1.0, why="the gradient-norm threshold; 0 disables clipping")
        in_range(self.warmup_ratio, "--warmup-ratio", 0, 1, example=0.02, why="a share of the steps")
        if self.warmup_ratio > 0.5:
            warn(f"--warmup-ratio {self.warmup_ratio:g} spends most steps warming up the learning rate; the paper uses 0.02")
        in_range(self.lora_alpha, "--lora-alpha", 0, lo_open=True, example=32.0, why="the update is scaled by alpha/r; 0 trains nothing")
        in_range(self.lora_dropout, "--lora-dropout", 0, 1, hi_open=True, example=0.1, why="a dropout probability")
        in_range(self.ema_rate, "--ema-rate", 0, 1, example=0.1, why="the rate of an exponential moving average")
        in_range(self.ema_target, "--ema-target", 0, lo_open=True, example=20.0, why="the value the normalised loss is scaled to")
        in_range(self.ldb_eps, "--ldb-eps", 0, lo_open=True, example=0.01, why="the ridge and eigenvalue floor of -log det(G + eps I)")
        in_range(self.w_alpha, "--w-alpha", 0, 1, example=0.929, why="the floor of pair weights in [alpha, 1]")
        in_range(self.w_beta, "--w-beta", 0, example=15.99, why="a sharpness")
        finite_float(self.w_tau, "--w-tau", 0.0)
        in_range(self.val_fraction, "--val-fraction", 0, 1, lo_open=True, hi_open=True, example=0.05, why="a share of the blocks")
        in_range(self.rho_ema, "--rho-ema", 0, 1, hi_open=True, example=0.9, why="0 = the previous step's exact rho")
        in_range(self.warmup_end, "--warmup-end", 0, 1, example=0.02, why="a share of the steps")
        in_range(self.cooldown_start, "--cooldown-start", 0, 1, example=0.879, why="a share of the steps")
        if self.warmup_end > self.cooldown_start:
            raise HeadgameError(f"--warmup-end {self.warmup_end} is after --cooldown-start {self.cooldown_start}; "
                                "phase boundaries must satisfy 0 <= --warmup-end <= --cooldown-start <= 1")
        checks = [
            ("pair_weights", [p.value for p in PairWeighting]),
            ("bt_target", list(BT_TARGETS)),
            ("arbitration", list(ARBITRATIONS)),
            ("nash_gradients", list(NASH_GRADIENTS)),
            ("schedule", [s.value for s in Schedule]),
            ("ema_mode", ["s", "nd-lora"]),
            ("mixed_precision", list(PRECISIONS)),
            ("loss_on", ["assistant", "all"]),
            ("dtype", list(DTYPES)),
        ]
        for name, valid in checks:
            if getattr(self, name) not in valid:
                raise HeadgameError(f"--{name.replace('_', '-')} {getattr(self, name)} is not valid; choose one of {', '.join(valid)}")
        if self.nash_gradients == "representation" and self.arbitration != "nash_mtl":
            raise HeadgameError(f"--nash-gradients representation is a way to compute Nash-MTL weights; it needs --arbitration nash_mtl (got {self.arbitration})")
        if self.nash_log_exact and self.nash_gradients != "representation":
            raise HeadgameError("--nash-log-exact compares the representation α with the exact one; add --nash-gradients representation or drop it")
        check_device(self.device)
        method.check(self)

    NOT_IDENTITY = frozenset({"device", "compile", "nash_log_exact", "out", "checkpoint_every", "keep_checkpoints", "save_merged", "tensorboard", "extra", "val_every"})


def default_design_layer(n_layers: int) -> int:
    """The paper's relative depth (layer 19 of 24) rounded for a model with ``n_layers``."""
    return min(n_layers - 1, max(0, round(PAPER_DESIGN_DEPTH * n_layers)))
