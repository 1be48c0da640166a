"""Entropy estimators (bits) from symbol counts [..., m], vectorised over the leading axes. Pure numpy.

* ``plugin``: log2 n − Σ c·log2 c / n;
* ``miller-madow``: plug-in + (m_obs − 1)/(2 n ln 2) (Miller 1955);
* ``chao-shen``: the coverage-adjusted Horvitz–Thompson estimator (Chao & Shen 2003), with
  C = 1 − f1/n (f1 = singletons; f1 = n − 1 when every symbol is a singleton, so that C > 0),
  p̂ = C·c/n and H = −Σ p̂ log2 p̂ / (1 − (1 − p̂)^n).

Zero counts are absent symbols; n = 0 gives 0 for every estimator.
:func:`headgame.info.entropy.entropy_from_counts` is the public entry point.
"""

from __future__ import annotations

import math

import numpy as np

LN2 = math.log(2.0)

ESTIMATORS = ("plugin", "miller-madow", "chao-shen")


def resolve_estimator(estimator: str | None = None, miller_madow: bool = False) -> str:
    """The estimator name meant by the pair (``estimator``, legacy ``miller_madow`` flag).

    ``miller_madow=False`` is the old default, so it cannot mean "not Miller–Madow": only
    ``miller_madow=True`` together with another estimator is a contradiction.
    """
    if estimator is None:
        return "miller-madow" if miller_madow else "plugin"
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown entropy estimator {estimator!r}; use one of {ESTIMATORS}")
    if miller_madow and estimator != "miller-madow":
        raise ValueError(f"miller_madow=True contradicts estimator={estimator!r}; pass only estimator=")
    return estimator


def _safe(n: np.ndarray) -> np.ndarray:
    return np.where(n > 0, n, 1.0)


def plugin(c: np.ndarray) -> np.ndarray:
    # log2 n − Σ c log2 c / n in numpy: torch's CPU log2 is ~400× slower on these sizes
    n = c.sum(-1)
    pos = c > 0
    clogc = np.where(pos, c * np.log2(np.where(pos, c, 1.0)), 0.0).sum(-1)
    return np.where(n > 0, np.log2(_safe(n)) - clogc / _safe(n), 0.0)


def miller_madow(c: np.ndarray) -> np.ndarray:
    n = c.sum(-1)
    m = (c > 0).sum(-1)
    return np.where(n > 0, plugin(c) + (m - 1.0) / (2.0 * _safe(n) * LN2), 0.0)


def chao_shen(c: np.ndarray) -> np.ndarray:
    n = c.sum(-1, keepdims=True)  # [..., 1]
    f1 = (c == 1).sum(-1, keepdims=True).astype(np.float64)
    f1 = np.where(f1 == n, n - 1.0, f1)  # all singletons: C = 1 − f1/n would be 0
    nn = _safe(n)
    p = (1.0 - f1 / nn) * c / nn  # [..., m]
    pos = c > 0
    ps = np.where(pos, p, 0.5)  # any value in (0, 1) keeps the masked-out terms finite
    # 1 − (1 − p)^n without cancellation when p is small and n large; p = 1 gives log1p = −inf → 1
    with np.errstate(divide="ignore"):
        inclusion = -np.expm1(nn * np.log1p(-ps))
    terms = np.where(pos, -ps * np.log2(ps) / inclusion, 0.0)
    return np.where(n[..., 0] > 0, terms.sum(-1), 0.0)


_KERNELS = {"plugin": plugin, "miller-madow": miller_madow, "chao-shen": chao_shen}


def estimate(counts, estimator: str) -> np.ndarray:
    """Entropy in bits [...] of ``counts`` [..., m] by ``estimator`` (a name in :data:`ESTIMATORS`)."""
    if estimator not in _KERNELS:
        raise ValueError(f"unknown entropy estimator {estimator!r}; use one of {ESTIMATORS}")
    return np.asarray(_KERNELS[estimator](np.asarray(counts, dtype=np.float64)), dtype=np.float64)
