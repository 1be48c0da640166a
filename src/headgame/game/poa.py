"""The Price-of-Anarchy bound with measured curvature constants, and the spectral maths behind them.

The GAME-LoRA specification (section 3.5, "PoA") states the bound

    PoA ≤ (1 + β_R + β_C) / (1 − (L/α)·Γ(G)²),   valid when (L/α)·Γ(G)² < 1,

with L a smoothness constant and α a strong-convexity modulus of the loss, and Γ(G) = ‖G − I‖_F.
``headgame.measure.curvature`` estimates L (the largest eigenvalue of the Hessian of the mean CE
loss with respect to a layer's head outputs) and α (its smallest eigenvalue, or a low quantile of
its spectrum) from Hessian-vector products; :func:`poa_bound` turns them into the bound. The
externality coefficients β_R and β_C cannot be measured from the retrievable paper text; with
their default 0 the returned value is the smallest the bound can be for the measured L, α, Γ.

The spectral helpers are pure and take the operator as a ``matvec`` callable on 1-D tensors:

* :func:`lanczos`: k steps of symmetric Lanczos with full re-orthogonalisation; Ritz values,
  Gauss-quadrature weights, residual bounds and Ritz vectors;
* :func:`power_iteration`: the dominant eigenpair of an operator, stopped on the residual;
* :func:`spectral_quantile`: the q-quantile of a discrete spectral density (stochastic Lanczos
  quadrature: Ritz values as nodes, squared first eigenvector components as weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from headgame.errors import HeadgameError

__all__ = ["poa_bound", "LanczosResult", "lanczos", "power_iteration", "spectral_quantile"]

Matvec = Callable[[Tensor], Tensor]


def _finite(name: str, value: Any, *, nonneg: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise HeadgameError(f"{name} must be a real number, got {value!r}; pass a float") from None
    if not math.isfinite(x):
        raise HeadgameError(f"{name} must be finite, got {x}; check the measurement that produced it")
    if nonneg and x < 0:
        raise HeadgameError(f"{name} must be >= 0, got {x}; pass a non-negative value")
    return x


def poa_bound(gamma: float, L: float, alpha: float, beta_r: float = 0.0, beta_c: float = 0.0) -> dict[str, Any]:
    """PoA ≤ (1 + β_R + β_C) / (1 − κΓ²), κ = L/α (GAME-LoRA specification, section 3.5).

    Args:
        gamma: Γ(G) = ‖G − I‖_F of the layer (``headgame.game.coupling.gamma``), ≥ 0.
        L: smoothness constant (largest Hessian eigenvalue), ≥ 0.
        alpha: strong-convexity modulus (smallest Hessian eigenvalue, or a low quantile of the
            spectrum); may be ≤ 0, and then the bound does not apply. Must not exceed L.
        beta_r, beta_c: the redundancy and correlated-error externality coefficients, ≥ 0. The
            paper's text available to us does not say how to measure them; with the default 0
            the result is a lower value of the bound (the true bound is at least this large).

    Returns:
        {"gamma", "L", "alpha", "beta_r", "beta_c", "kappa", "kappa_gamma2", "finite", "bound",
        "denominator_factor", "reason"}. ``denominator_factor`` = 1/(1 − κΓ²) is the measured
        part; ``bound`` = (1 + β_R + β_C)·denominator_factor. When the bound does not apply
        (α ≤ 0, or κΓ² ≥ 1), ``finite`` is False, ``bound`` and ``denominator_factor`` are
        ``math.inf`` (``kappa`` and ``kappa_gamma2`` too when α ≤ 0) and ``reason`` says why in
        one line; otherwise ``reason`` is None.
    """
    g = _finite("gamma", gamma, nonneg=True)
    lip = _finite("L", L, nonneg=True)
    a = _finite("alpha", alpha)
    br = _finite("beta_r", beta_r, nonneg=True)
    bc = _finite("beta_c", beta_c, nonneg=True)
    if a > 0 and a > lip * (1 + 1e-6):
        raise HeadgameError(f"alpha ({a:g}) exceeds L ({lip:g}); L must be the largest curvature and alpha the smallest "
                            "(pass them in the right order)")
    out: dict[str, Any] = {"gamma": g, "L": lip, "alpha": a, "beta_r": br, "beta_c": bc}
    if a <= 0:
        out.update(kappa=math.inf, kappa_gamma2=math.inf, finite=False, bound=math.inf, denominator_factor=math.inf,
                   reason=f"alpha = {a:.3g} <= 0: the loss is not strongly convex in these outputs, so the bound does not apply")
        return out
    kappa = max(lip / a, 1.0)  # L ≥ α; the max absorbs the rounding allowed above
    kg2 = kappa * g * g
    out.update(kappa=kappa, kappa_gamma2=kg2)
    if kg2 >= 1.0:
        out.update(finite=False, bound=math.inf, denominator_factor=math.inf,
                   reason=f"(L/alpha)*Gamma^2 = {kg2:.3g} >= 1: the bound is vacuous (infinite) at this coupling")
        return out
    factor = 1.0 / (1.0 - kg2)
    out.update(finite=True, bound=(1.0 + br + bc) * factor, denominator_factor=factor, reason=None)
    return out


# ----------------------------------------------------------------------------- Lanczos
@dataclass
class LanczosResult:
    """k-step Lanczos tridiagonalisation Qᵀ A Q = T of a symmetric operator A.

    ``values`` are the Ritz values (eigenvalues of T, ascending); ``weights`` the squared first
    components of T's eigenvectors (Gauss-quadrature weights of the start vector's spectral
    measure; they sum to 1); ``residuals`` the bounds ‖A y_j − θ_j y_j‖ = |β_k·s_kj| of the Ritz
    pairs (exactly 0 when Lanczos found an invariant subspace).
    """

    alpha: np.ndarray  # [k] diagonal of T
    beta: np.ndarray  # [k-1] off-diagonal of T
    beta_last: float  # β_k, the norm of the residual vector after the last step
    basis: Tensor  # [k, n] orthonormal Lanczos vectors Q (rows)
    values: np.ndarray  # [k] Ritz values, ascending
    vectors: np.ndarray  # [k, k] eigenvectors S of T (columns)
    weights: np.ndarray  # [k] S[0, j]²
    residuals: np.ndarray  # [k] |β_k S[k-1, j]|

    @property
    def steps(self) -> int:
        return int(self.alpha.shape[0])

    def ritz_vector(self, j: int) -> Tensor:
        """The unit Ritz vector y_j = Q s_j of Ritz value ``values[j]`` (negative j counts from the top)."""
        s = torch.as_tensor(self.vectors[:, j], dtype=self.basis.dtype, device=self.basis.device)
        y = s @ self.basis  # [k] @ [k, n] -> [n]
        return y / y.norm()


def _check_vector(name: str, v: Tensor) -> Tensor:
    if not isinstance(v, Tensor) or v.dim() != 1 or v.numel() == 0:
        raise HeadgameError(f"{name} must be a non-empty 1-D tensor, got {getattr(v, 'shape', type(v))}; flatten it first")
    if not torch.isfinite(v).all():
        raise HeadgameError(f"{name} has non-finite entries; start from a finite vector")
    return v


def _apply(matvec: Matvec, v: Tensor) -> Tensor:
    w = matvec(v)
    if not isinstance(w, Tensor) or w.shape != v.shape:
        raise HeadgameError(f"matvec returned {getattr(w, 'shape', type(w))} for a vector of shape {tuple(v.shape)}; "
                            "it must return a vector of the same shape")
    if not torch.isfinite(w).all():
        raise HeadgameError("matvec returned non-finite values; the operator (e.g. the loss Hessian) overflowed, "
                            "run it in float32 or float64")
    return w.to(v.dtype)


def lanczos(matvec: Matvec, v0: Tensor, steps: int) -> LanczosResult:
    """``steps`` Lanczos steps of the symmetric operator ``matvec`` from ``v0``.

    Every new vector is re-orthogonalised twice against all previous ones (full
    re-orthogonalisation), so no spurious copies of converged Ritz values appear. The run stops
    early when the Krylov space becomes invariant (β below 1e-10 of the largest |α|, β seen);
    at most ``len(v0)`` steps are taken. After k = n steps the Ritz values are the eigenvalues
    of A (to rounding). With k < n they interlace with them (Cauchy): the j-th smallest Ritz
    value is ≥ the j-th smallest eigenvalue and the j-th largest is ≤ the j-th largest; the
    extreme ones converge first, interior ones are only quadrature nodes.
    """
    v0 = _check_vector("v0", v0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise HeadgameError(f"steps must be an integer >= 1, got {steps!r}; use e.g. 20")
    nrm = float(v0.norm())
    if nrm == 0.0:
        raise HeadgameError("v0 is the zero vector; start Lanczos from a random non-zero vector")
    k_max = min(steps, v0.numel())
    basis = torch.zeros(k_max, v0.numel(), dtype=v0.dtype, device=v0.device)  # [k, n]
    q = v0 / nrm
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    beta_last = 0.0
    for j in range(k_max):
        basis[j] = q
        w = _apply(matvec, q)
        a = float(q @ w)
        alphas.append(a)
        w = w - a * q
        if j > 0:
            w = w - betas[-1] * basis[j - 1]
        for _ in range(2):  # full re-orthogonalisation, twice ("twice is enough")
            w = w - (basis[: j + 1] @ w) @ basis[: j + 1]
        b = float(w.norm())
        scale = max(scale, abs(a), b)
        beta_last = b
        if j == k_max - 1 or b <= 1e-10 * scale:
            break
        betas.append(b)
        q = w / b
    alpha = np.asarray(alphas, dtype=np.float64)
    beta = np.asarray(betas[: len(alphas) - 1], dtype=np.float64)
    tri = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    values, vectors = np.linalg.eigh(tri)
    if len(alphas) < k_max or beta_last <= 1e-10 * scale:
        beta_last = 0.0  # invariant subspace: the Ritz pairs are exact eigenpairs
    return LanczosResult(
        alpha=alpha, beta=beta, beta_last=beta_last, basis=basis[: len(alphas)], values=values, vectors=vectors,
        weights=vectors[0] ** 2, residuals=np.abs(beta_last * vectors[-1]),
    )


def power_iteration(matvec: Matvec, v0: Tensor, *, iters: int, tol: float, scale: float | None = None) -> dict[str, Any]:
    """Dominant eigenpair of the symmetric operator ``matvec`` by power iteration from ``v0``.

    Each step computes w = A v (one matvec), the Rayleigh quotient θ = vᵀw and the residual
    ‖w − θ v‖ of the unit vector v, then moves to v ← w/‖w‖. It stops, converged, when the
    residual is ≤ ``tol``·``scale`` (``scale`` defaults to |θ|): some eigenvalue of A then lies
    within that residual of θ. The residual is unchanged by a shift A − σI, so a caller looking
    for an extreme eigenvalue of H passes the shifted operator and the spectral scale of H.

    Returns:
        {"value": θ of the last checked vector, "vector": that unit vector, "iters": matvecs
        used, "converged": bool, "residual": its residual norm}.
    """
    v = _check_vector("v0", v0)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise HeadgameError(f"iters must be an integer >= 1, got {iters!r}; use e.g. 20")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise HeadgameError(f"tol must be a positive number, got {tol!r}; use e.g. 1e-3")
    nrm = float(v.norm())
    if nrm == 0.0:
        raise HeadgameError("v0 is the zero vector; start power iteration from a non-zero vector")
    v = v / nrm
    theta, res, used, converged = 0.0, math.inf, 0, False
    for used in range(1, iters + 1):
        w = _apply(matvec, v)
        theta = float(v @ w)
        res = float((w - theta * v).norm())
        if res <= tol * (abs(theta) if scale is None else float(scale)):
            converged = True
            break
        wn = float(w.norm())
        if used == iters:
            break
        v = w / wn
    return {"value": theta, "vector": v, "iters": used, "converged": converged, "residual": res}


def spectral_quantile(nodes: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-quantile of the discrete spectral density Σ_j w_j δ(x − θ_j): the smallest node θ
    whose cumulative (normalised) weight reaches q.

    With stochastic Lanczos quadrature the nodes are the Ritz values of several Lanczos runs from
    random unit probes and the weights their Gauss weights divided by the number of probes; their
    mixture approximates the eigenvalue distribution (1/n)Σ δ(x − λ_i). Its resolution is that of
    the nodes: a k-step run places k nodes, so a low quantile is located to within the spacing
    of the lowest nodes, and is pulled towards the extreme eigenvalue when k is small.
    """
    x = np.asarray(nodes, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if x.size == 0 or x.shape != w.shape:
        raise HeadgameError(f"nodes and weights must be non-empty and of equal length, got {x.size} and {w.size}; "
                            "pass one weight per Ritz value")
    if not (np.isfinite(x).all() and np.isfinite(w).all()) or (w < 0).any() or w.sum() <= 0:
        raise HeadgameError("weights must be finite, non-negative and not all zero, and nodes finite; "
                            "pass the Ritz values and their Gauss weights")
    if not (isinstance(q, (int, float)) and 0 < q < 1):
        raise HeadgameError(f"q must lie strictly between 0 and 1, got {q!r}; e.g. 0.05 for the 5% quantile")
    order = np.argsort(x, kind="stable")
    cum = np.cumsum(w[order]) / w.sum()
    idx = int(np.searchsorted(cum, q - 1e-12, side="left"))
    return float(x[order][min(idx, x.size - 1)])
