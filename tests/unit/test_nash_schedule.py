"""Nash-MTL solver and the λ schedule (spec game-lora §4.5, §4.6, §11)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from headgame.game.nash_mtl import combine, solve_nash_weights, task_gram
from headgame.game.schedule import lambda_scale


def test_schedule_values_from_spec():
    # spec §11: s(p) at p ∈ {0, 0.01, 0.02, 0.5, 0.879, 0.94, 1.0} is {0, 0.5, 1, 1, 1, ≈0.496, 0}
    expected = [0.0, 0.5, 1.0, 1.0, 1.0, (1 - 0.94) / (1 - 0.879), 0.0]
    got = [lambda_scale(p) for p in (0.0, 0.01, 0.02, 0.5, 0.879, 0.94, 1.0)]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[5] == pytest.approx(0.496, abs=1e-3)
    assert lambda_scale(0.0, "constant") == 1.0 and lambda_scale(0.99, "constant") == 1.0


def test_orthogonal_gradients_give_inverse_norms():
    g1 = torch.tensor([3.0, 0.0, 0.0])
    g2 = torch.tensor([0.0, 0.5, 0.0])
    res = solve_nash_weights(task_gram([g1, g2]))
    np.testing.assert_allclose(res.alpha, [1 / 3.0, 1 / 0.5], rtol=1e-8)
    # the update has equal projections on every task direction: α_k ‖g_k‖² = 1/α_k... = ‖g_k‖
    delta = combine([g1, g2], res.alpha)
    np.testing.assert_allclose([float(delta @ g1), float(delta @ g2)], [3.0, 0.5], rtol=1e-8)


@pytest.mark.parametrize("seed", range(5))
def test_bargaining_condition_on_random_grams(seed):
    rng = np.random.default_rng(seed)
    k = rng.integers(2, 5)
    gm = rng.normal(size=(k, 40)) * rng.uniform(0.01, 100, size=(k, 1))
    m = gm @ gm.T
    res = solve_nash_weights(m)
    assert (res.alpha > 0).all() and not res.regularised
    np.testing.assert_allclose(m @ res.alpha, 1 / res.alpha, rtol=1e-7)


def test_identical_gradients_split_evenly():
    g = torch.tensor([1.0, 2.0, 2.0])  # ‖g‖ = 3: 2a·9 = 1/a → a = 1/(3√2)
    res = solve_nash_weights(task_gram([g, g]))
    np.testing.assert_allclose(res.alpha, [1 / (3 * np.sqrt(2))] * 2, rtol=1e-8)


def test_opposite_gradients_are_regularised_not_divergent():
    g = torch.tensor([1.0, -2.0])
    res = solve_nash_weights(task_gram([g, -g]))
    assert res.regularised and np.isfinite(res.alpha).all() and (res.alpha > 0).all()


def _cvxpy_reference(m: np.ndarray, n_iter: int = 20) -> np.ndarray:
    """The reference Nash-MTL formulation (Navon et al.'s convex-concave procedure) in cvxpy."""
    import cvxpy as cp

    k = m.shape[0]
    norm = np.linalg.norm(m)
    mn = m / norm
    alpha = cp.Variable(k, nonneg=True)
    prev = cp.Parameter(k, value=np.ones(k))
    g_prev = mn @ prev
    phi_lin = (1 / prev + (1 / g_prev) @ mn) @ (alpha - prev)  # linearised concave part
    g_alpha = mn @ alpha
    cons = [-cp.log(alpha[i]) - cp.log(g_alpha[i]) <= 0 for i in range(k)]
    prob = cp.Problem(cp.Minimize(cp.sum(g_alpha) + phi_lin), cons)
    value = np.ones(k)
    for _ in range(n_iter):
        prev.value = value
        prob.solve(warm_start=True)
        if alpha.value is None:
            break
        value = np.asarray(alpha.value)
    return value / np.sqrt(norm)


@pytest.mark.skipif(importlib.util.find_spec("cvxpy") is None, reason="cvxpy not installed (pip install 'headgame[cvxpy]')")
@pytest.mark.parametrize("seed", range(4))
def test_matches_cvxpy_reference(seed):
    rng = np.random.default_rng(100 + seed)
    gm = rng.normal(size=(3, 25))
    m = gm @ gm.T
    ours = solve_nash_weights(m).alpha
    ref = _cvxpy_reference(m, n_iter=50)
    # the CCP converges to the same fixed point M α = 1/α
    np.testing.assert_allclose(m @ ref, 1 / ref, rtol=1e-3)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("torchjd") is None, reason="torchjd not installed")
def test_matches_torchjd_nash_mtl():
    from torchjd.aggregation import NashMTL

    rng = np.random.default_rng(7)
    gm = torch.tensor(rng.normal(size=(3, 30)), dtype=torch.float64)
    agg = NashMTL(n_tasks=3)
    theirs = agg(gm)  # their update direction Σ α_k g_k
    res = solve_nash_weights(task_gram(list(gm)))
    ours = combine(list(gm), res.alpha)
    cos = torch.nn.functional.cosine_similarity(theirs, ours, dim=0)
    assert float(cos) > 0.999
