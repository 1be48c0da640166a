"""Nash-MTL weights against independent solutions: the closed form of two tasks, worked out by hand
and evaluated in 60-digit decimal arithmetic, and the single-task rule.

Two tasks, M = [[a, b], [b, c]]. The bargaining condition M α = 1/α (Navon et al. 2022, Eq. 2)
reads a·x² + b·x·y = 1 and b·x·y + c·y² = 1 for α = (x, y) > 0. Subtracting: a·x² = c·y², so
y = x·√(a/c), and then x² (a + b·√(a/c)) = 1, i.e.

    x = 1 / √(a + b·√(a/c)),   y = x·√(a/c)   (a solution exists iff b > −√(ac)).

In terms of the gradients, α_k = 1 / (‖g_k‖ √(1 + cos θ)): nearly opposite gradients (cos θ → −1)
give large weights and an ill-conditioned M.
"""

from __future__ import annotations

from decimal import Decimal, localcontext

import numpy as np
import pytest
import torch

from headgame.game.nash_mtl import solve_nash_weights


def _two_task_exact(m: np.ndarray) -> np.ndarray:
    with localcontext() as ctx:
        ctx.prec = 60
        a, b, c = (Decimal(float(v)) for v in (m[0, 0], m[0, 1], m[1, 1]))  # exact binary values
        ratio = (a / c).sqrt()
        x = 1 / (a + b * ratio).sqrt()
        return np.array([float(x), float(x * ratio)])


@pytest.mark.parametrize("d", [2.0**-10, 2.0**-20, 2.0**-26, 2.0**-30])
def test_nearly_opposite_gradients_match_the_closed_form(d):
    # g1 = (1, 0), g2 = (−1, √d): cos θ = −1/√(1+d); M is exact in float64
    m = np.array([[1.0, -1.0], [-1.0, 1.0 + d]])
    exact = _two_task_exact(m)
    res = solve_nash_weights(m)
    np.testing.assert_allclose(res.alpha, exact, rtol=1e-6)
    assert not res.regularised  # a positive solution exists; no ridge is needed


@pytest.mark.parametrize("eps", [1e-3, 1e-4, 1e-5])
def test_nearly_opposite_gradient_vectors(eps):
    rng = np.random.default_rng(3)
    u = rng.normal(size=40)
    v = rng.normal(size=40)
    v -= (v @ u) / (u @ u) * u
    gm = np.stack([u, -1.7 * u + eps * np.linalg.norm(u) * v / np.linalg.norm(v)])
    m = gm @ gm.T
    exact = _two_task_exact(m)
    res = solve_nash_weights(m)
    # conditioning limits what float64 can resolve: cond(M) ≈ 1e6 … 1e10 here
    np.testing.assert_allclose(res.alpha, exact, rtol=1e-5)
    assert not res.regularised


def test_never_worse_than_the_best_iterate():
    # the residual reported is that of the α returned, on the original (unridged) equations
    m = np.array([[1.0, -1.0], [-1.0, 1.0 + 2.0**-22]])
    res = solve_nash_weights(m)
    mn = m / np.linalg.norm(m)
    a = res.alpha * np.sqrt(np.linalg.norm(m))
    assert res.residual == pytest.approx(float(np.max(np.abs(a * (mn @ a) - 1))), rel=1e-6, abs=1e-12)
    exact = _two_task_exact(m) * np.sqrt(np.linalg.norm(m))
    assert res.residual < 1e-6 and float(np.max(np.abs(exact * (mn @ exact) - 1))) < 1e-6


def test_one_task_takes_the_plain_gradient():
    from headgame.game.nash_mtl import nash_update

    g = torch.tensor([3.0, -4.0, 12.0])  # ‖g‖ = 13: M α = 1/α alone would give α = 1/13
    delta, res = nash_update([g])
    assert torch.equal(delta, g) and list(res.alpha) == [1.0]
    delta2, res2 = nash_update([g, torch.tensor([0.0, 1.0, 0.0])])
    assert len(res2.alpha) == 2 and not torch.equal(delta2, g)
