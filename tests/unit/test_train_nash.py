"""The trainer's Nash-MTL step against an independent one on a tiny model.

The test takes the task losses the trainer builds for one step, differentiates each itself
(``torch.autograd.grad`` over every trainable parameter), solves the bargaining condition
α_k (G α)_k = 1 (Navon et al. 2022, Eq. 2; G the Gram matrix of the task gradients) with
scipy's least-squares solver in float64, and compares Σ α_k g_k with the gradient the trainer
hands to the optimizer (clipping off, so that gradient is the update direction itself).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from headgame.train.config import TrainConfig
from headgame.train.loop import Trainer
from tests.conftest import TRAIN_TEXT


def _trainer(tmp_path: Path, **kw) -> Trainer:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TRAIN_TEXT)
    base = dict(model="tiny-llama", data=str(corpus), max_tokens=2048, seq_len=32, batch_size=4, grad_accum=1,
                out=str(tmp_path / "o"), val_every=0, checkpoint_every=0, seed=3, method="game-lora",
                lora_dropout=0.0, clip=0.0)  # no dropout: our backward sees the trainer's graph as is
    base.update(kw)
    return Trainer(TrainConfig(**base), progress=False).setup()


def _record_step(trainer: Trainer) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run one train_step; return our per-task gradients of its losses and the update it applied."""
    params = trainer.groups.params
    ours: dict[str, torch.Tensor] = {}
    terms = trainer.objective.terms

    def spy(*args, **kwargs):
        out = terms(*args, **kwargs)
        for task in out.tasks:
            grads = torch.autograd.grad(task.loss, params, retain_graph=True, allow_unused=True)
            flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])
            ours[task.name] = ours.get(task.name, 0) + flat.double()
        return out

    applied: list[torch.Tensor] = []
    step = trainer.optimizer.step

    def capture(*args, **kwargs):
        applied.append(torch.cat([p.grad.reshape(-1) for p in params]).double())
        return step(*args, **kwargs)

    trainer.objective.terms, trainer.optimizer.step = spy, capture
    try:
        trainer.train_step()
    finally:
        trainer.objective.terms, trainer.optimizer.step = terms, step
    return ours, applied[0]


def _bargain(grads: list[torch.Tensor]) -> np.ndarray:
    """α > 0 with α_k (G α)_k = 1, by least squares in log α (keeps α positive), float64."""
    g = torch.stack(grads).numpy()
    gram = g @ g.T
    x0 = -np.log(np.sqrt(np.diag(gram)))  # α_k = 1/‖g_k‖, exact for orthogonal gradients
    sol = least_squares(lambda x: np.exp(x) * (gram @ np.exp(x)) - 1.0, x0, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    alpha = np.exp(sol.x)
    assert np.max(np.abs(alpha * (gram @ alpha) - 1.0)) < 1e-9
    return alpha


def _assert_same_direction(update: torch.Tensor, expected: torch.Tensor) -> None:
    cos = float(update @ expected / (update.norm() * expected.norm()))
    rel = float((update.norm() - expected.norm()).abs() / expected.norm())
    assert cos > 0.9999 and rel < 1e-4, (cos, rel)


def test_one_task_step_is_the_plain_ce_step(tmp_path):
    # three-phase schedule: λ = 0 at step 0, so CE is the only task; a large LoRA scale makes
    # ‖∇L_CE‖ far from 1, so a step normalised to unit length would be far from the plain one
    trainer = _trainer(tmp_path, lora_alpha=128.0)
    ours, update = _record_step(trainer)
    assert list(ours) == ["ce"]
    assert float(ours["ce"].norm()) > 2.0
    torch.testing.assert_close(update, ours["ce"], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("extra, tasks", [
    ({}, ["ce", "ldb", "abt"]),
    ({"no_abt": True}, ["ce", "ldb"]),
    ({"no_ldb": True}, ["ce", "abt"]),
])
def test_nash_step_matches_an_independent_solve(tmp_path, extra, tasks):
    trainer = _trainer(tmp_path, schedule="constant", **extra)
    trainer.train_step()  # step 0 sets ρ from a real gradient (ρ = I makes L_LDB constant)
    ours, update = _record_step(trainer)
    assert list(ours) == tasks
    grads = [ours[n] for n in tasks]
    assert all(float(g.norm()) > 0 for g in grads)
    alpha = _bargain(grads)
    expected = sum(float(a) * g for a, g in zip(alpha, grads))
    _assert_same_direction(update, expected)
