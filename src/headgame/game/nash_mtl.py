"""Nash-MTL gradient arbitration (Navon et al., ICML 2022; docs/formulas.md#nash-mtl).

Given task gradients g_1..g_K (columns of Gm) and M = Gmᵀ Gm, the Nash bargaining solution is the
α ∈ R^K_{>0} with **M α = 1/α** (elementwise); the update is Δ = Σ_k α_k g_k.

Solver (ours): M α = 1/α is exactly the stationarity condition of the strictly convex function
f(α) = ½ αᵀ M α − Σ_k log α_k on α > 0 (its Hessian M + diag(1/α²) is positive definite), so we
minimise f with damped Newton steps that keep α positive. K is 2-3 here, so each step is a tiny
linear solve; convergence is quadratic. As the reference does, M is first divided by its norm and
α rescaled afterwards (α scales as 1/sqrt of M's scale). Nearly opposite task gradients make M
ill-conditioned: α is then judged against the residual rounding allows, not a fixed tolerance.
When f is unbounded below — two task gradients pointing in exactly opposite directions, or a zero
gradient — no positive solution exists; a tiny ridge is added, the ridged α is kept only if it
satisfies M α = 1/α better than the best unridged one, and the result is flagged ``regularised``.

With a single task Nash-MTL would only rescale its gradient to unit length; :func:`nash_update`
takes the plain gradient instead (α = 1), so a step where every regulariser is switched off is an
ordinary CE step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class NashResult:
    alpha: np.ndarray  # [K] bargaining weights
    iterations: int
    residual: float  # max_k |α_k (M α)_k − 1|, on the normalised, unridged problem
    regularised: bool = False


_EPS = float(np.finfo(np.float64).eps)


def _residual(m: np.ndarray, alpha: np.ndarray) -> float:
    """max_k |α_k (M α)_k − 1|: how far α is from M α = 1/α, relative to 1/α."""
    return float(np.max(np.abs(alpha * (m @ alpha) - 1.0)))


def _rounding_floor(m: np.ndarray, alpha: np.ndarray) -> float:
    """The residual that rounding alone leaves at α: (M α)_k is a sum of K terms whose sizes add
    up to (|M| α)_k, so it carries an error of about K·ε·(|M| α)_k (Higham, Accuracy and Stability
    of Numerical Algorithms, §3.1). Nearly opposite task gradients make (M α)_k a small difference
    of large terms; no α can then be judged on a finer scale than this."""
    k = m.shape[0]
    return 4.0 * k * _EPS * float(np.max(alpha * (np.abs(m) @ alpha)))


def _newton(m: np.ndarray, alpha0: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, int, float, bool]:
    """Damped Newton on f; returns the iterate with the smallest residual seen (never a later,
    worse one), its iteration, that residual, and whether it is converged: within ``tol``, or
    within the rounding floor of the problem once Newton stops improving.

    f is self-concordant (a convex quadratic plus −Σ log), so the step t = 1/(1 + λ), λ the Newton
    decrement, always decreases f and keeps α > 0, and t = 1 converges quadratically once
    λ < 1/4 (Boyd & Vandenberghe, Convex Optimization, §9.6). No line search on f is needed,
    whose rounding (f sums terms of size α²|M|) would stall Newton on an ill-conditioned M."""
    alpha = alpha0.copy()
    best, best_it, best_res = alpha.copy(), 0, _residual(m, alpha)
    stalled = 0  # pure-Newton steps in a row that did not lower the residual
    for it in range(1, max_iter + 1):
        if best_res < tol or stalled > 5:  # converged, or stagnating at the rounding level
            break
        grad = m @ alpha - 1.0 / alpha  # ∇f
        hess = m + np.diag(1.0 / alpha**2)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        lam = float(np.sqrt(max(grad @ step, 0.0)))  # Newton decrement; |step_k| / α_k ≤ λ
        alpha = alpha - (1.0 if lam < 0.25 else 1.0 / (1.0 + lam)) * step
        if not np.isfinite(alpha).all() or (alpha <= 0).any() or alpha.max() > 1e12:
            break  # f unbounded below: no positive solution
        res = _residual(m, alpha)
        if res < best_res:
            best, best_it, best_res, stalled = alpha.copy(), it, res, 0
        elif lam < 0.25:
            stalled += 1
    return best, best_it, best_res, best_res < tol or best_res <= _rounding_floor(m, best)


def solve_nash_weights(gram: np.ndarray | torch.Tensor, *, max_iter: int = 100, tol: float = 1e-10,
                       alpha0: np.ndarray | None = None) -> NashResult:
    """Solve M α = 1/α, α > 0, for a K×K Gram matrix M of task gradients.

    Converged means max_k |α_k (M α)_k − 1| within ``tol``, or within what rounding allows at α
    (see :func:`_rounding_floor`): nearly opposite gradients make M ill-conditioned, and Newton
    then reaches the solution to working precision but not to a fixed ``tol``."""
    m = np.asarray(gram.detach().cpu().double().numpy() if isinstance(gram, torch.Tensor) else gram, dtype=np.float64)
    m = 0.5 * (m + m.T)
    k = m.shape[0]
    scale = float(np.linalg.norm(m))
    if scale == 0.0 or not np.isfinite(scale):
        return NashResult(np.ones(k), 0, float("nan"), regularised=True)
    mn = m / scale
    start = np.ones(k) / np.sqrt(max(np.trace(mn), 1e-12) / k + 1e-12) if alpha0 is None else np.asarray(alpha0, float) * np.sqrt(scale)
    start = np.clip(start, 1e-6, 1e6)
    alpha, it, res, ok = _newton(mn, start, max_iter, tol)
    if not ok:
        # no positive solution (opposite or zero gradients): ridge the problem minimally, and keep
        # the unridged iterate unless a ridged α satisfies the original equations better
        ridge = 1e-6
        while ridge < 1.0:
            cand, cand_it, _, cand_ok = _newton(mn + ridge * np.eye(k), np.ones(k), max_iter, tol)
            cand_res = _residual(mn, cand)
            if cand_res <= res:
                alpha, it, res = cand, cand_it, cand_res
            if cand_ok:
                break
            ridge *= 10
    return NashResult(alpha / np.sqrt(scale), it, res, regularised=not ok)


def nash_update(grads: list[torch.Tensor]) -> tuple[torch.Tensor, NashResult]:
    """The Nash-MTL update Δ = Σ_k α_k g_k of flattened task gradients, and its solve.

    With one task there is nothing to bargain over: α = 1 and Δ is that task's plain gradient
    (GAME-LoRA drops a task whose λ is 0, and with CE alone the step is plain SGD on L_CE), not
    the unit vector g/‖g‖ that M α = 1/α would give."""
    if len(grads) == 1:
        return grads[0], NashResult(np.ones(1), 0, 0.0)
    res = solve_nash_weights(task_gram(grads))
    return combine(grads, res.alpha), res


def combine(grads: list[torch.Tensor], alpha: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Δ = Σ_k α_k g_k over flattened gradients."""
    a = torch.as_tensor(alpha, dtype=grads[0].dtype, device=grads[0].device)
    return sum(a[k] * g for k, g in enumerate(grads))


def task_gram(grads: list[torch.Tensor]) -> torch.Tensor:
    """M = Gmᵀ Gm for flattened task gradients (float64 for the solve)."""
    gm = torch.stack([g.double() for g in grads])  # [K, P]
    return gm @ gm.T
