"""Nash-MTL gradient arbitration (Navon et al., ICML 2022; spec game-lora §4.6).

Given task gradients g_1..g_K (columns of Gm) and M = Gmᵀ Gm, the Nash bargaining solution is the
α ∈ R^K_{>0} with **M α = 1/α** (elementwise); the update is Δ = Σ_k α_k g_k.

Solver (ours): M α = 1/α is exactly the stationarity condition of the strictly convex function
f(α) = ½ αᵀ M α − Σ_k log α_k on α > 0 (its Hessian M + diag(1/α²) is positive definite), so we
minimise f with damped Newton steps that keep α positive. K is 2-3 here, so each step is a tiny
linear solve; convergence is quadratic. As the reference does, M is first divided by its norm and
α rescaled afterwards (α scales as 1/sqrt of M's scale). When f is unbounded below — two task
gradients pointing in exactly opposite directions, or a zero gradient — no positive solution
exists; a tiny ridge is added and the result flagged ``regularised``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class NashResult:
    alpha: np.ndarray  # [K] bargaining weights
    iterations: int
    residual: float  # max |M α − 1/α| relative to 1/α, on the normalised problem
    regularised: bool = False


def _newton(m: np.ndarray, alpha0: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, int, float, bool]:
    alpha = alpha0.copy()
    for it in range(1, max_iter + 1):
        grad = m @ alpha - 1.0 / alpha  # ∇f
        res = float(np.max(np.abs(grad) * alpha))  # relative residual of M α = 1/α
        if res < tol:
            return alpha, it - 1, res, True
        hess = m + np.diag(1.0 / alpha**2)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return alpha, it, res, False
        # keep α > 0: largest step fraction with α − t·step > 0, then backtrack on f
        t = 1.0
        neg = step > 0
        if neg.any():
            t = min(1.0, 0.99 * float(np.min(alpha[neg] / step[neg])))
        f0 = 0.5 * alpha @ m @ alpha - np.log(alpha).sum()
        slope = -grad @ step
        while t > 1e-12:
            cand = alpha - t * step
            if (cand > 0).all():
                f1 = 0.5 * cand @ m @ cand - np.log(cand).sum()
                # (the last term absorbs rounding once f has converged to machine precision)
                if f1 <= f0 + 1e-4 * t * slope + 1e-13 * abs(f0):
                    break
            t *= 0.5
        alpha = alpha - t * step
        if not np.isfinite(alpha).all() or alpha.max() > 1e12:
            return alpha, it, float("inf"), False
    grad = m @ alpha - 1.0 / alpha
    res = float(np.max(np.abs(grad) * alpha))
    return alpha, max_iter, res, res < tol


def solve_nash_weights(gram: np.ndarray | torch.Tensor, *, max_iter: int = 100, tol: float = 1e-10,
                       alpha0: np.ndarray | None = None) -> NashResult:
    """Solve M α = 1/α, α > 0, for a K×K Gram matrix M of task gradients."""
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
    regularised = False
    if not ok:
        # no positive solution (opposite or zero gradients): ridge the problem minimally
        ridge = 1e-6
        while not ok and ridge < 1.0:
            alpha, it, res, ok = _newton(mn + ridge * np.eye(k), np.ones(k), max_iter, tol)
            ridge *= 10
        regularised = True
    return NashResult(alpha / np.sqrt(scale), it, res, regularised)


def combine(grads: list[torch.Tensor], alpha: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Δ = Σ_k α_k g_k over flattened gradients."""
    a = torch.as_tensor(alpha, dtype=grads[0].dtype, device=grads[0].device)
    return sum(a[k] * g for k, g in enumerate(grads))


def task_gram(grads: list[torch.Tensor]) -> torch.Tensor:
    """M = Gmᵀ Gm for flattened task gradients (float64 for the solve)."""
    gm = torch.stack([g.double() for g in grads])  # [K, P]
    return gm @ gm.T
