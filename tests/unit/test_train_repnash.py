"""Representation-space Nash-MTL (--nash-gradients representation) against an independent
computation on a tiny model.

For each step the test differentiates every task loss the trainer builds itself: g_k over all
trainable parameters (``torch.autograd.grad``), and δ_k = ∂L_k/∂x_c at the block input of the
Barlow-Twins layer c (recorded by the test's own forward hook). It then forms the representation
Gram M̃ = A Aᵀ + s·ΔΔᵀ from the parts of g_k in layers ≥ c (A) and the δ_k (Δ), with the gain s
the trainer logged, solves α_k (M̃ α)_k = 1 with scipy in float64, and checks that

* the applied update is Σ_k α_k g_k with the *exact* g_k (so the single backward below c is right);
* the logged gain is ‖Σ α_k b_k‖² / ‖Σ α_k δ_k‖² of the previous step (b_k: g_k below c);
* the first step (no gain yet) takes the exact α; one task gives the plain CE gradient.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import least_squares

from headgame.errors import HeadgameError
from headgame.models.tap import HeadTap
from headgame.train.config import TrainConfig
from headgame.train.loop import Trainer
from headgame.train.terms import Task
from tests.conftest import TRAIN_TEXT


def _trainer(tmp_path: Path, **kw) -> Trainer:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TRAIN_TEXT)
    base = dict(model="tiny-llama", data=str(corpus), max_tokens=2048, seq_len=32, batch_size=4, grad_accum=1,
                out=str(tmp_path / "o"), val_every=0, checkpoint_every=0, seed=3, method="game-lora",
                lora_dropout=0.0, clip=0.0, nash_gradients="representation", schedule="constant")
    base.update(kw)
    return Trainer(TrainConfig(**base), progress=False).setup()


def _layer_of(name: str) -> int:
    return int(re.search(r"\.layers\.(\d+)\.", name).group(1))


def _record_step(trainer: Trainer):
    """One train_step: our g_k and δ_k of its losses, the update it applied and its log."""
    params, cut = trainer.groups.params, trainer.game.repnash.cut
    block = trainer.layout.blocks(trainer.model)[cut]
    seen: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
                                             with_kwargs=True)
    grads, deltas = {}, []  # deltas: one {task: δ} per micro-batch
    terms = trainer.objective.terms

    def spy(*args, **kwargs):
        out = terms(*args, **kwargs)
        deltas.append({})
        for task in out.tasks:
            g = torch.autograd.grad(task.loss, params, retain_graph=True, allow_unused=True)
            flat = torch.cat([(torch.zeros_like(p) if x is None else x).reshape(-1) for p, x in zip(params, g)]).double()
            grads[task.name] = grads.get(task.name, 0) + flat
            (d,) = torch.autograd.grad(task.loss, seen[-1], retain_graph=True, allow_unused=True)
            deltas[-1][task.name] = torch.zeros_like(seen[-1]).double().reshape(-1) if d is None else d.double().reshape(-1)
        return out

    applied: list[torch.Tensor] = []
    step = trainer.optimizer.step

    def capture(*args, **kwargs):
        applied.append(torch.cat([p.grad.reshape(-1) for p in params]).double())
        return step(*args, **kwargs)

    trainer.objective.terms, trainer.optimizer.step = spy, capture
    try:
        log = trainer.train_step()
    finally:
        trainer.objective.terms, trainer.optimizer.step = terms, step
        handle.remove()
    below = torch.cat([torch.full((p.numel(),), _layer_of(n) < cut, dtype=torch.bool)
                       for n, p in zip(trainer.groups.names, params)])
    return grads, deltas, applied[0], log, below


def _assert_same_update(update: torch.Tensor, expected: torch.Tensor) -> None:
    # float32 sums in another order (one backward of Σ α δ vs Σ α of per-task backwards): elementwise
    # to 1e-5 relative, with an absolute floor of 1e-6 of the largest entry for entries near 0
    torch.testing.assert_close(update, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    assert float((update - expected).norm() / expected.norm()) < 1e-6


def _bargain(gram: np.ndarray) -> np.ndarray:
    x0 = -np.log(np.sqrt(np.diag(gram)))
    sol = least_squares(lambda x: np.exp(x) * (gram @ np.exp(x)) - 1.0, x0, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    alpha = np.exp(sol.x)
    assert np.max(np.abs(alpha * (gram @ alpha) - 1.0)) < 1e-9
    return alpha


def _gram_parts(g, d, below, names):
    gm = torch.stack([g[n] for n in names])
    cut = sum(torch.stack([dm[n] for n in names]) @ torch.stack([dm[n] for n in names]).T for dm in d)
    return gm, gm * (~below), gm * below, cut


@pytest.mark.parametrize("accum", [1, 2])
def test_representation_step_is_sum_of_exact_gradients_with_representation_alpha(tmp_path, accum):
    trainer = _trainer(tmp_path, grad_accum=accum, batch_size=4 // accum)
    trainer.train_step()  # sets ρ from a real gradient (ρ = I makes L_LDB constant)
    names = ["ce", "ldb", "abt"]

    # step 1 as if first: no gain measured yet, so a calibration step: exact α, every b_k exactly
    trainer.game.repnash.state = {"gain": None, "ratios": {}, "since": 0}
    g, d, update, log, below = _record_step(trainer)
    assert list(g) == names and log.get("nash_calibration") is True
    gm, a, b, cut = _gram_parts(g, d, below, names)
    alpha = _bargain((gm @ gm.T).numpy())
    np.testing.assert_allclose([log["nash_alpha"][n] for n in names], alpha, rtol=1e-6)
    _assert_same_update(update, (torch.as_tensor(alpha)[:, None] * gm).sum(0))
    assert float(cut[1].abs().max()) == 0.0  # L_LDB does not reach the residual stream
    task_gain = np.array([float(b[j] @ b[j] / cut[j, j]) if cut[j, j] > 0 else 0.0 for j in range(3)])
    assert task_gain[0] > 0 and task_gain[2] > 0

    # step 2: the gains of step 1's tasks; α from M̃ = A Aᵀ + √(s_i s_j) C, the update Σ α_k g_k (exact g_k)
    g, d, update, log, below = _record_step(trainer)
    assert "nash_calibration" not in log
    np.testing.assert_allclose([log["nash_gains"][n] for n in names], task_gain, rtol=1e-5)
    gm, a, b, cut = _gram_parts(g, d, below, names)
    alpha = _bargain((a @ a.T).numpy() + np.sqrt(np.outer(task_gain, task_gain)) * cut.numpy())
    np.testing.assert_allclose([log["nash_alpha"][n] for n in names], alpha, rtol=1e-6)
    _assert_same_update(update, (torch.as_tensor(alpha)[:, None] * gm).sum(0))
    exact = _bargain((gm @ gm.T).numpy())
    assert not np.allclose(alpha, exact, rtol=1e-3)  # an approximation: a test of the Gram it uses, not a copy
    # the gain of the direction step 2 took, ‖Σ α b_k‖² / ‖Σ α δ_k‖², rescales the gains of step 3
    step2_gain = float(((torch.as_tensor(alpha)[:, None] * b).sum(0)).pow(2).sum() / (torch.as_tensor(alpha) @ cut @ torch.as_tensor(alpha)))
    ratio_gain = np.array([trainer.game.repnash.state["ratios"][n] for n in names])

    g, d, update, log, below = _record_step(trainer)
    np.testing.assert_allclose([log["nash_gains"][n] for n in names], ratio_gain * step2_gain, rtol=1e-5)
    gm, a, b, cut = _gram_parts(g, d, below, names)
    gains = ratio_gain * step2_gain
    alpha = _bargain((a @ a.T).numpy() + np.sqrt(np.outer(gains, gains)) * cut.numpy())
    _assert_same_update(update, (torch.as_tensor(alpha)[:, None] * gm).sum(0))


def test_calibration_recurs_every_n_representation_steps(tmp_path):
    trainer = _trainer(tmp_path, nash_calibrate_every=2)
    flags = [("nash_calibration" in trainer.train_step()) for _ in range(7)]
    assert flags == [True, False, False, True, False, False, True]


def test_log_exact_reports_the_exact_alpha_and_applies_the_representation_one(tmp_path):
    trainer = _trainer(tmp_path, nash_log_exact=True)
    trainer.train_step()  # calibration (and ρ from a real gradient)
    g, d, update, log, below = _record_step(trainer)
    names = ["ce", "ldb", "abt"]
    gm = torch.stack([g[n] for n in names])
    np.testing.assert_allclose([log["nash_alpha_exact"][n] for n in names], _bargain((gm @ gm.T).numpy()), rtol=1e-6)
    alpha = np.array([log["nash_alpha"][n] for n in names])
    _assert_same_update(update, (torch.as_tensor(alpha)[:, None] * gm).sum(0))


def test_one_task_is_the_plain_ce_step(tmp_path):
    # three-phase schedule: λ = 0 at step 0, CE alone
    trainer = _trainer(tmp_path, schedule="three_phase", lora_alpha=128.0)
    g, _, update, _, _ = _record_step(trainer)
    assert list(g) == ["ce"]
    _assert_same_update(update, g["ce"])
    # and the representation machinery itself, with CE as its only task and any gain
    rep, model, layout = trainer.game.repnash, trainer.model, trainer.layout
    rep.state = {"gain": 123.0, "ratios": {"ce": 0.5}, "since": 0}
    rep.begin(log_exact=False)
    ids = trainer.train_ids[:2].to(torch.long)
    with HeadTap(model, layout, [rep.cut], keep_graph=True, block_inputs=[rep.cut]) as tap:
        logits = model(input_ids=ids, use_cache=False).logits
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        rep.micro_batch([Task("ce", ce, None)], tap.block_inputs[rep.cut], before_ce=lambda: None, after_ce=lambda: None)
    total, res, _ = rep.finish(["ce"])
    logits = model(input_ids=ids, use_cache=False).logits
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    expected = torch.cat([x.reshape(-1) for x in torch.autograd.grad(ce, trainer.groups.params)])
    assert list(res.alpha) == [1.0]
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kw, needle", [
    ({"abt_layers": [1], "ldb_layers": [0]}, "one Barlow-Twins layer at or below"),
    ({"design_layers": [0, 1]}, "one Barlow-Twins layer"),
])
def test_layouts_without_a_single_cut_are_refused(tmp_path, kw, needle):
    with pytest.raises(HeadgameError, match=needle):
        _trainer(tmp_path, **kw)


@pytest.mark.parametrize("kw, needle", [
    ({"arbitration": "sum"}, "needs --arbitration nash_mtl"),
    ({"nash_gradients": "parameters", "nash_log_exact": True}, "add --nash-gradients representation"),
    ({"nash_gradients": "layers"}, "choose one of parameters, representation"),
])
def test_bad_flags_are_refused(tmp_path, kw, needle):
    with pytest.raises(HeadgameError, match=needle):
        TrainConfig(**{**dict(model="tiny-llama", data="default", nash_gradients="representation"), **kw})


def test_sigkill_and_resume_keeps_the_gains(tmp_path):
    """A run killed mid-cycle resumes with the measured gains, ratios and calibration count: the
    adapter equals that of an uninterrupted run."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from tests.unit.test_train import adapter_tensors

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TRAIN_TEXT)
    args = ["train", "--model", "tiny-llama", "--data", str(corpus), "--max-tokens", "2048", "--seq-len", "32",
            "--batch-size", "4", "--checkpoint-every", "3", "--val-every", "0", "--no-progress", "--lora-dropout", "0",
            "--nash-gradients", "representation", "--nash-calibrate-every", "4"]

    def cli(extra, env=None):
        return subprocess.run([sys.executable, "-m", "headgame.cli", *extra], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=300)

    ref = cli([*args, "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    killed = cli([*args, "--out", str(tmp_path / "cut")], env={"HEADGAME_FAULT_AFTER_STEP": "8"})
    assert killed.returncode == -signal.SIGKILL
    resumed = cli(["train", "--resume", str(tmp_path / "cut"), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = adapter_tensors(tmp_path / "ref" / "adapter"), adapter_tensors(tmp_path / "cut" / "adapter")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ref_m = [json.loads(l) for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    cut_m = [json.loads(l) for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [("nash_calibration" in r) for r in cut_m] == [("nash_calibration" in r) for r in ref_m]
    assert sum("nash_calibration" in r for r in ref_m) >= 2 and any("nash_gains" in r for r in ref_m[7:])
    for r, c in zip(ref_m, cut_m):
        if "nash_gains" in r:
            np.testing.assert_allclose(list(c["nash_gains"].values()), list(r["nash_gains"].values()), rtol=1e-5)
