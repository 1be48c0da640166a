"""headgame inside transformers' Trainer and TRL's SFTTrainer, on tiny-llama with peft LoRA.

Γ logged by HeadCouplingCallback is checked against Γ computed here from gradients captured by a
test-local hook and plain numpy; GameLoraTrainer's first three optimizer steps against
``headgame train``'s on the same batches.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback, TrainingArguments

from headgame.errors import HeadgameError
from headgame.integrations.transformers import GameLoraTrainer, HeadCouplingCallback
from headgame.models.load import load_model
from headgame.train.config import TrainConfig, default_design_layer
from headgame.train.loop import Trainer as HeadgameTrainer
from headgame.train.lora import add_lora


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Every Trainer configures accelerate's process-wide state (SFTConfig turns bf16 on); the
    next test, and headgame train in other test files, must start from a clean one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _args(out, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), per_device_train_batch_size=4, logging_steps=1, save_strategy="no", report_to="none",
                use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, train_sampling_strategy="sequential")
    base.update(kw)
    return TrainingArguments(**base)


def _lora_model(seed: int = 0):
    torch.manual_seed(seed)
    base, tok, layout = load_model("tiny-llama")
    return add_lora(base, layout, r=4, alpha=8.0, dropout=0.0, seed=seed), tok, layout


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class _Record(TrainerCallback):
    """Trainable weights before each step and after each step; every log it sees; stops after ``stop`` steps."""

    def __init__(self, stop: int | None = None) -> None:
        self.before, self.after, self.logs, self.stop = [], [], [], stop

    def on_step_begin(self, args, state, control, model=None, **kw):
        self.before.append(_lora_state(model))

    def on_step_end(self, args, state, control, model=None, **kw):
        self.after.append(_lora_state(model))
        if self.stop and state.global_step >= self.stop:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kw):
        self.logs.append(dict(logs))


def _gamma_by_hand(model, layout, ids: torch.Tensor, layer: int) -> dict[str, float]:
    """Γ of ``layer`` on one batch, independent of HeadTap and headgame.game.coupling: the o_proj
    input's gradient from a local hook, ω from the LoRA factors, everything else in numpy."""
    o_proj = layout.o_proj(model, layer)
    seen = {}

    def keep(module, args):
        args[0].retain_grad()
        seen["x"] = args[0]

    handle = o_proj.register_forward_pre_hook(keep)
    try:
        logits = model(input_ids=ids, use_cache=False).logits
        F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    h, dh = layout.n_heads, layout.head_dim
    g = seen["x"].grad.double().numpy().reshape(-1, h, dh)  # [B,T,H*dh] -> [N,H,dh]
    vecs = g.transpose(1, 0, 2).reshape(h, -1)  # head i's gradient over every token
    if hasattr(o_proj, "base_layer"):  # peft: W + (α/r)·B·A
        w = o_proj.base_layer.weight + o_proj.scaling["default"] * o_proj.lora_B["default"].weight @ o_proj.lora_A["default"].weight
    else:
        w = o_proj.weight
    w = w.detach().double().numpy()
    slices = w.reshape(w.shape[0], h, dh).transpose(1, 0, 2).reshape(h, -1)  # W_O^(i), flattened

    def cos(v):
        n = np.linalg.norm(v, axis=1)
        return (v @ v.T) / np.outer(n, n)

    off = cos(slices) * cos(vecs) - np.eye(h)
    np.fill_diagonal(off, 0.0)
    fro = float(np.sqrt((off ** 2).sum()))
    return {"gamma": fro, "gamma_norm": fro / math.sqrt(h * (h - 1)), "gamma_abs": float(np.abs(off).sum() / (h * (h - 1)))}


@pytest.mark.parametrize("peft", [True, False])
def test_callback_logs_gamma_every_step(tmp_path, peft):
    if peft:
        model, tok, layout = _lora_model()
    else:  # full fine-tuning of every weight
        torch.manual_seed(0)
        model, tok, layout = load_model("tiny-llama")
    gen = torch.Generator().manual_seed(1)
    batch = torch.randint(0, 256, (4, 24), generator=gen)
    data = [{"input_ids": row, "labels": row} for row in batch]  # one batch per epoch: the same tokens each step
    default_cb = HeadCouplingCallback()
    both = HeadCouplingCallback(layers=[0, -1], prefix="hc/", g_every=2, g_path=tmp_path / "g.jsonl")
    rec = _Record()
    from transformers import Trainer

    trainer = Trainer(model=model, args=_args(tmp_path / "hf", max_steps=3, learning_rate=5e-3), train_dataset=data,
                      callbacks=[rec, both])
    default_cb.attach(trainer)  # ahead of every other callback, as the report_to integrations need
    trainer.train()

    design = default_design_layer(layout.n_layers)
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in history] == [1, 2, 3]
    for step, h in enumerate(history):
        model_at = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in model_at.named_parameters():
                if n in rec.before[step]:
                    p.copy_(rec.before[step][n])
        ours = {l: _gamma_by_hand(model_at, layout, batch, l) for l in (0, 1)}
        for key in ("gamma", "gamma_norm", "gamma_abs"):
            assert h[key] == pytest.approx(ours[design][key], rel=1e-6, abs=1e-9)
            assert h[f"hc/{key}"] == pytest.approx(ours[0][key], rel=1e-6, abs=1e-9)
            assert h[f"hc/{key}_l1"] == pytest.approx(ours[1][key], rel=1e-6, abs=1e-9)
    # a callback before the others is seen by them (report_to); one passed in callbacks= only by those after it
    seen = [l for l in rec.logs if "loss" in l]
    assert all("gamma" in l for l in seen) and not any("hc/gamma" in l for l in seen)
    assert [r["step"] for r in default_cb.history] == [1, 2, 3]
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [(r["step"], r["layer"]) for r in rows] == [(2, 0), (2, 1)]
    g = np.array(rows[1]["G"])
    assert np.allclose(g, g.T) and np.allclose(np.diag(g), 1.0)
    assert rows[1]["gamma"] == pytest.approx(history[1]["hc/gamma_l1"])
    assert not layout.o_proj(model, 1)._forward_pre_hooks  # the tap is gone after training


@pytest.mark.parametrize("extra", [{}, {"arbitration": "sum", "design_layers": [0, 1]}, {"batch_size": 2, "grad_accum": 2}])
def test_game_lora_trainer_equals_headgame_train(tmp_path, corpus, extra):
    kw = dict(model="tiny-llama", data=str(corpus), max_tokens=2048, seq_len=32, batch_size=4, out=str(tmp_path / "o"),
              val_every=0, checkpoint_every=0, seed=3, lora_dropout=0.0, warmup_ratio=0.0)
    cfg = TrainConfig(**{**kw, **extra})
    ref = HeadgameTrainer(cfg, progress=False).setup()
    try:
        model = copy.deepcopy(ref.model)  # the same base weights and LoRA initialisation
        initial = _lora_state(model)
        blocks = [{"input_ids": ref.train_ids[i]} for i in ref.order]  # headgame's batch order
        expected, records = [], []
        for _ in range(3):
            records.append(ref.train_step())
            expected.append(_lora_state(ref.model))
    finally:
        ref.folder.release()
    args = _args(tmp_path / "hf", per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
                 max_steps=ref.total_steps, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
                 adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", lr_scheduler_type="cosine",
                 warmup_steps=math.ceil(cfg.warmup_ratio * ref.total_steps), max_grad_norm=cfg.clip, seed=cfg.seed)
    rec = _Record(stop=3)
    trainer = GameLoraTrainer(model=model, args=args, train_dataset=blocks, callbacks=[rec], game=cfg)
    trainer.train()
    assert len(rec.after) == 3
    for step, (ours, theirs, prev) in enumerate(zip(rec.after, expected, [initial] + expected)):
        assert ours.keys() == theirs.keys()
        assert max(float((theirs[n] - prev[n]).abs().max()) for n in theirs) > 1e-5  # every step moves the adapter
        for n in ours:
            torch.testing.assert_close(ours[n], theirs[n], rtol=0, atol=1e-6, msg=f"step {step + 1}: {n}")
    logged = [h for h in trainer.state.log_history if "loss" in h]
    for h, r in zip(logged, records):
        for key in ("ce", "gamma", "lambda_ldb"):
            assert h[key] == pytest.approx(r[key], rel=1e-6, abs=1e-9)
    if "arbitration" not in extra:  # the first step is CE alone (λ = 0), then Nash-MTL weighs the three tasks
        assert "nash_alpha_ldb" not in logged[0] and "nash_alpha_ldb" in logged[1]


def test_game_config_rejects_trainer_fields():
    model, _, _ = _lora_model()
    with pytest.raises(HeadgameError, match="lr, which come from the Trainer's arguments"):
        GameLoraTrainer(model=model, args=_args("unused"), game={"lr": 1e-3})


def _chat_records() -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
            for a in range(6) for b in range(1, 7)]


def test_sft_trainer_with_game_lora_logs_gamma(tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig

    from headgame.integrations.transformers import GameLoraSFTTrainer

    model, tok, layout = _lora_model()
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    args = SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=4, max_steps=3, logging_steps=1,
                     save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, max_length=64, learning_rate=1e-3)
    trainer = GameLoraSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(_chat_records()),
                                 processing_class=tok, game={"schedule": "constant"})
    before = _lora_state(model)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3
    assert all(h["gamma"] >= 0 and "gamma_abs" in h and "ce" in h for h in logged)
    assert all("ldb" in h and "abt" in h for h in logged)  # constant λ: the regularisers act from step 1
    assert trainer.game_step.tap_layers == [default_design_layer(layout.n_layers)]
    assert any(not torch.equal(before[n], p) for n, p in _lora_state(model).items())


def test_sft_trainer_without_trl_says_how_to_install(monkeypatch):
    from headgame.integrations import transformers as hgt

    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    with pytest.raises(HeadgameError, match="pip install trl"):
        hgt._sft_trainer_class.__wrapped__()


def test_import_is_light():
    code = ("import sys, headgame.integrations.transformers as m; "
            "heavy = [n for n in ('headgame.train.step', 'headgame.train.loop', 'headgame.models.tap', "
            "'headgame.game.coupling', 'headgame.models.layout', 'trl') if n in sys.modules]; "
            "print(heavy); assert not heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_game_lora_trainer_resumes_its_game_state(tmp_path):
    """A Trainer checkpoint holds ρ, α, the EMA and the representation-Nash gains: resuming from it
    gives the adapter of an uninterrupted run; resuming without them does not (the test can fail)."""
    import shutil

    gen = torch.Generator().manual_seed(2)
    data = [{"input_ids": row} for row in torch.randint(0, 256, (24, 24), generator=gen)]
    game = {"schedule": "constant", "nash_gradients": "representation", "nash_calibrate_every": 2}

    def run(out, stop=None, resume=None):
        model, _, _ = _lora_model()
        args = _args(out, max_steps=6, learning_rate=5e-3, save_strategy="steps", save_steps=3, seed=0)
        trainer = GameLoraTrainer(model=model, args=args, train_dataset=data, callbacks=[_Record(stop=stop)], game=game)
        trainer.train(resume_from_checkpoint=resume)
        return _lora_state(trainer.model), trainer

    full, full_trainer = run(tmp_path / "full")
    run(tmp_path / "cut", stop=3)
    ckpt = tmp_path / "cut" / "checkpoint-3"
    saved = json.loads((ckpt / "headgame_game_step.json").read_text())
    assert saved["alpha_tasks"] == ["ce", "ldb", "abt"] and saved["nash_representation"]["gain"] > 0
    bare = tmp_path / "bare" / "checkpoint-3"
    shutil.copytree(ckpt, bare)
    (bare / "headgame_game_step.json").unlink()
    resumed, resumed_trainer = run(tmp_path / "cut", resume=str(ckpt))
    for n in full:
        torch.testing.assert_close(resumed[n], full[n], rtol=0, atol=1e-6, msg=n)
    ours, theirs = resumed_trainer.game_step.repnash.state, full_trainer.game_step.repnash.state
    assert ours["since"] == theirs["since"] and ours["gain"] == pytest.approx(theirs["gain"], rel=1e-5)
    fresh, _ = run(tmp_path / "bare", resume=str(bare))
    assert max(float((fresh[n] - full[n]).abs().max()) for n in full) > 1e-5
