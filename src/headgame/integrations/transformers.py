"""Head coupling Γ and the GAME-LoRA objective inside a Hugging Face ``transformers.Trainer``.

* :class:`HeadCouplingCallback` logs Γ, Γ_norm and Γ_abs (docs/formulas.md#gamma) of chosen layers
  every optimizer step of any Trainer, for every model ``HeadLayout`` supports, with or without peft.
* :class:`GameLoraTrainer` trains with the objective of ``headgame train`` (L_CE + λ_LDB·L_LDB +
  λ_ABT·L̂_ABT, the λ schedule and Nash-MTL; docs/formulas.md#objective). Both run the same
  :class:`headgame.train.step.GameStep`, so they take the same update on the same batch.
* ``GameLoraSFTTrainer``: the same on TRL's ``SFTTrainer`` (needs ``trl``; built on first use).

Importing this module imports transformers' Trainer, nothing torch-heavy of headgame: the tap,
the coupling maths and the training step are imported when first used.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import Trainer, TrainerCallback

from headgame.errors import HeadgameError

if TYPE_CHECKING:
    from headgame.train.config import TrainConfig

__all__ = ["HeadCouplingCallback", "GameLoraMixin", "GameLoraTrainer", "GameLoraSFTTrainer"]

# the TrainConfig fields the objective reads; the rest (optimizer, batches, LoRA) come from the
# Trainer's arguments and your model
OBJECTIVE_FIELDS = (
    "method", "design_layers", "abt_layers", "ldb_layers", "no_ldb", "no_abt", "pair_weights", "bt_target",
    "arbitration", "schedule", "lambda_abt", "lambda_ldb", "warmup_end", "cooldown_start", "w_alpha", "w_beta",
    "w_tau", "ldb_eps", "ema_target", "ema_rate", "ema_mode", "rho_ema", "nash_update_every", "nash_gradients",
    "nash_calibrate_every", "nash_log_exact", "disagreement_lambda",
)


def _layers(spec, n_layers: int, flag: str) -> list[int]:
    from headgame.models.layout import parse_layers
    from headgame.train.config import default_design_layer

    return parse_layers(spec if spec is not None else [default_design_layer(n_layers)], n_layers, flag=flag, ordered=True)


def _is_training_log(logs: dict[str, Any]) -> bool:
    """The periodic training log, not evaluation metrics nor the end-of-training summary."""
    return not any(k.startswith(("eval_", "test_", "train_")) for k in logs)


class HeadCouplingCallback(TrainerCallback):
    """Logs Γ of ``layers`` after every optimizer step through the Trainer's own logging.

    ω comes from the current W_O slices (with the LoRA delta; docs/formulas.md#omega), taken
    before the optimizer step like ``headgame train``; ρ is the cosine of the exact per-head
    gradients at the o_proj input over the step's tokens (docs/formulas.md#rho), i.e. of the
    gradient of the Trainer's loss. Padding adds nothing to ρ (its gradient is zero). The tap is
    installed on train begin and removed on train end.

    Args:
        layers: layers to measure, e.g. ``[3, -1]`` (default: the paper's design depth,
            docs/formulas.md#design-layer).
        g_every: also append the full G, ω and ρ to ``g_path`` every N optimizer steps (0 = never).
        g_path: that JSONL file (default ``<output_dir>/head_coupling.jsonl``; emptied by a fresh run).
        prefix: prefix of the logged keys.

    Keys (as in ``headgame train``'s metrics): ``gamma``, ``gamma_norm``, ``gamma_abs`` for the
    first layer, with ``_l<layer>`` appended for the others; each log holds the values of the
    step it is written at. ``history`` keeps one record per step. Register it with
    ``cb.attach(trainer)`` so that the ``report_to`` integrations see the values too (transformers
    runs the callbacks passed to ``Trainer(callbacks=...)`` after them). :class:`GameLoraTrainer`
    logs Γ of its design layers itself; there, ρ is the pure CE gradient, which this callback
    would not see (a regulariser's gradient also reaches the o_proj input).
    """

    def __init__(self, layers: list[int] | None = None, *, g_every: int = 0, g_path: str | Path | None = None,
                 prefix: str = "") -> None:
        if not isinstance(g_every, int) or isinstance(g_every, bool) or g_every < 0:
            raise HeadgameError(f"g_every must be an integer >= 0 (0 = never write G), got {g_every!r}")
        self.layer_spec, self.g_every, self.g_path, self.prefix = layers, g_every, g_path, prefix
        self.history: list[dict[str, Any]] = []
        self.latest: dict[str, float] = {}
        self._tap = None
        self._attached = False

    def attach(self, trainer: Trainer) -> "HeadCouplingCallback":
        """Add this callback to ``trainer`` ahead of the others (its report_to integrations included)."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        self._attached = True
        return self

    # ---------------------------------------------------------------- lifecycle
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from headgame.game.coupling import GradientGram
        from headgame.models.layout import HeadLayout
        from headgame.models.tap import HeadTap

        if model is None:
            raise HeadgameError("HeadCouplingCallback got no model from the Trainer; pass model= to the Trainer")
        if args.report_to and args.report_to != ["none"] and not self._attached:
            import warnings

            warnings.warn("HeadCouplingCallback runs after the report_to callbacks; use cb.attach(trainer) so they log Γ too",
                          stacklevel=2)
        if self._tap is not None:  # an earlier train() raised before its on_train_end
            self.on_train_end(args, state, control)
        self.model = model
        self.layout = HeadLayout.from_model(model)
        self.layers = _layers(self.layer_spec, self.layout.n_layers, "layers")
        self._grams = {l: GradientGram(self.layout.n_heads, self.layout.head_dim) for l in self.layers}
        if self.g_every and state.is_world_process_zero:
            self._g_file = Path(self.g_path) if self.g_path else Path(args.output_dir) / "head_coupling.jsonl"
            self._g_file.parent.mkdir(parents=True, exist_ok=True)
            if state.global_step == 0:
                self._g_file.write_text("")
        self._tap = HeadTap(model, self.layout, self.layers, on_grad=lambda l, g: self._grams[l].update(g))
        self._tap.__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        if self._tap is not None:
            self._tap.__exit__(None, None, None)
            self._tap = None

    # ---------------------------------------------------------------- per step
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        """Γ of this step: ρ of its gradients, ω of the weights they were computed at."""
        import torch

        from headgame.game.coupling import GradientGram, cosine_from_gram, gamma, interaction_matrix, weight_coupling

        step = state.global_step + 1
        record: dict[str, Any] = {"step": step}
        latest: dict[str, float] = {}
        rows = []
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        for i, l in enumerate(self.layers):
            acc = self._grams[l]
            self._grams[l] = GradientGram(self.layout.n_heads, self.layout.head_dim)  # the next step's
            gram, n_tokens = acc.gram(), acc.n_tokens
            if distributed:  # ρ over every process's tokens (docs/formulas.md#rho)
                gram = gram.to(next(self.model.parameters()).device)
                torch.distributed.all_reduce(gram)
                gram = gram.cpu()
            if not bool(gram.abs().sum() > 0):
                continue  # no gradient reached this layer's o_proj input (e.g. nothing below it trains)
            with torch.no_grad():
                omega = weight_coupling(self.layout.head_slices(self.model, l).detach().double())
                rho = cosine_from_gram(gram)
                g = interaction_matrix(omega, rho)
            gam = gamma(g)
            suffix = "" if i == 0 else f"_l{l}"
            latest.update({f"{self.prefix}{k}{suffix}": v for k, v in gam.items()})
            record[str(l)] = {"n_tokens": n_tokens, **gam}
            rows.append({"step": step, "layer": l, "n_tokens": n_tokens, **gam, "G": g.tolist(),
                         "omega": omega.tolist(), "rho": rho.tolist()})
        self.latest = latest
        self.history.append(record)
        if self.g_every and step % self.g_every == 0 and state.is_world_process_zero and rows:
            with open(self._g_file, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self.latest or not _is_training_log(logs):
            return
        before = set(logs)
        logs.update(self.latest)
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step and set(last) - {"step"} == before:
            last.update(self.latest)  # the Trainer recorded this log before calling the callbacks


def _game_config(game) -> TrainConfig:
    from headgame.train.config import TrainConfig

    if game is None:
        return TrainConfig()
    if isinstance(game, TrainConfig):
        return game
    if not isinstance(game, dict):
        raise HeadgameError(f"game must be a TrainConfig, a dict of its objective fields or None, got {type(game).__name__}")
    other = sorted(set(game) - set(OBJECTIVE_FIELDS))
    if other:
        raise HeadgameError(f"game sets {', '.join(other)}, which come from the Trainer's arguments or your model here; "
                            f"set them there (game takes {', '.join(OBJECTIVE_FIELDS)})")
    return TrainConfig(**game)


def _flat_log(log: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in log.items():
        if isinstance(v, dict):  # nash_alpha: {task: α}; nash_grams (K×K matrices) are not scalars to log
            out.update({f"{k}_{name}": float(a) for name, a in v.items() if isinstance(a, (int, float))})
        else:
            out[k] = float(v)
    return out


GAME_STATE_FILE = "headgame_game_step.json"


class GameLoraMixin:
    """Makes a ``transformers.Trainer`` (sub)class train with ``headgame train``'s objective.

    Pass ``game``: a :class:`headgame.train.config.TrainConfig`, or a dict of its objective
    fields (``OBJECTIVE_FIELDS``: method, layers, λs, schedule, arbitration, ρ EMA, Nash); the
    default is ``headgame train``'s game-lora. Optimizer, learning-rate schedule, clipping
    (``max_grad_norm``), batches and the LoRA adapter come from the Trainer's arguments and your
    (peft) model. Each micro-batch's tasks are divided by the accumulation steps; labels
    (unshifted, -100 = no loss) default to the input ids. The logged ``loss`` is L_CE; the game
    terms, α and Γ are logged beside it, averaged over the steps since the last log. One
    process, fp32 or bf16. Every Trainer checkpoint also holds ``headgame_game_step.json`` (ρ, α,
    the Barlow-Twins EMA, the representation-Nash gains), and ``train(resume_from_checkpoint=...)``
    restores it, so a resumed run takes the steps an uninterrupted one takes.
    """

    def __init__(self, *args, game: TrainConfig | dict | None = None, **kwargs) -> None:
        self.game_config = _game_config(game)
        super().__init__(*args, **kwargs)
        self.game_step = None  # headgame.train.step.GameStep, built on the first training step
        self.game_log: dict[str, Any] = {}  # the last step's log
        self._game_logs: list[dict[str, float]] = []

    def _build_game_step(self, model):
        from headgame.models.layout import HeadLayout
        from headgame.train.lora import param_groups
        from headgame.train.step import GameStep, game_layers

        if self.args.world_size > 1:
            raise HeadgameError("GameLoraTrainer runs on one process; for several use headgame train under accelerate launch")
        if self.args.fp16:
            raise HeadgameError("GameLoraTrainer does not support fp16 loss scaling; train in fp32 or with bf16=True")
        cfg = self.game_config
        layout = HeadLayout.from_model(model)
        groups = param_groups(model, layout)
        design, abt, ldb = game_layers(cfg, layout.n_layers)
        if ldb and not groups.ldb_indices(ldb):
            raise HeadgameError(f"L_LDB acts through W_O, but layer(s) {ldb} have no trainable o_proj; "
                                "add the output projection to the LoRA target modules or pass game={'no_ldb': True}")
        step = GameStep(cfg, layout, groups, design=design, abt_layers=abt, ldb_layers=ldb, world=1)
        if getattr(self, "_resumed_game_state", None) is not None:
            step.load_state_dict(self._resumed_game_state)
            self._resumed_game_state = None
        return step

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        super()._save_checkpoint(model, trial, *args, **kwargs)
        if self.game_step is not None and self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            from headgame.io import write_json_atomic

            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            write_json_atomic(folder / GAME_STATE_FILE, self.game_step.state_dict())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / GAME_STATE_FILE
        if path.exists():  # a checkpoint written without GAME-LoRA state starts ρ, α and the EMA afresh
            self._resumed_game_state = json.loads(path.read_text())
            if self.game_step is not None:
                self.game_step.load_state_dict(self._resumed_game_state)
                self._resumed_game_state = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        from headgame.train.step import NonFiniteLoss

        if self.game_step is None:
            self.game_step = self._build_game_step(model)
        game = self.game_step
        if not game.open:
            game.begin(self.state.global_step, self.state.max_steps)
        if callable(getattr(self.optimizer, "train", None)):  # schedule-free optimizers, as Trainer does
            self.optimizer.train()
        batch = dict(self._prepare_inputs(inputs))
        ids, mask, labels = batch.pop("input_ids"), batch.pop("attention_mask", None), batch.pop("labels", None)
        accum = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        offload = getattr(self, "maybe_activation_offload_context", None) or contextlib.nullcontext()
        try:
            with offload:
                loss = game.micro_batch(model, ids, accum=accum, attention_mask=mask, labels=labels,
                                        autocast=self.compute_loss_context_manager, **batch)
        except NonFiniteLoss as exc:
            raise HeadgameError(f"non-finite loss at step {exc.step + 1} ({exc.values}); lower the learning rate or check the data") from None
        if self.accelerator.sync_gradients:  # the last micro-batch: arbitrate, write p.grad, new ρ
            log = game.finish(model)
            log["lambda_abt"] = game.lambdas["abt"] if game.abt_layers else 0.0
            log["lambda_ldb"] = game.lambdas["ldb"] if game.ldb_layers else 0.0
            self.game_log = log
            self._game_logs.append(_flat_log(log))
        return loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._game_logs and _is_training_log(logs):
            keys = dict.fromkeys(k for d in self._game_logs for k in d)
            for k in keys:
                values = [d[k] for d in self._game_logs if k in d]
                logs[k] = sum(values) / len(values)
            self._game_logs.clear()
        super().log(logs, *args, **kwargs)


class GameLoraTrainer(GameLoraMixin, Trainer):
    """``transformers.Trainer`` training with the GAME-LoRA objective (see :class:`GameLoraMixin`)::

        trainer = GameLoraTrainer(model=peft_model, args=TrainingArguments(...), train_dataset=ds,
                                  game={"lambda_ldb": 0.352, "design_layers": [19]})
        trainer.train()
    """


@functools.cache
def _sft_trainer_class() -> type:
    try:
        from trl import SFTTrainer
    except ImportError:
        raise HeadgameError("GameLoraSFTTrainer needs TRL; run: pip install trl") from None

    class GameLoraSFTTrainer(GameLoraMixin, SFTTrainer):
        """TRL's ``SFTTrainer`` training with the GAME-LoRA objective (see :class:`GameLoraMixin`)."""

    GameLoraSFTTrainer.__module__ = __name__
    return GameLoraSFTTrainer


def __getattr__(name: str):
    if name == "GameLoraSFTTrainer":
        return _sft_trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
