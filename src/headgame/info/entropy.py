"""Shannon entropies (bits) of discretised head outputs and their joint symbols.

Pure functions on integer tensors; no model, no I/O (docs/formulas.md, entropies).

* A subset S of heads is one joint variable: its symbol at an observation is the tuple
  (X_i)_{i∈S}. Each column is first made dense (its distinct values numbered 0..m−1 in sorted
  order, so symbols of any sign and size work), then columns are joined one at a time as
  ``code·m + x`` followed by ``np.unique(return_inverse=True)``. Both factors are below n, so
  the mixing is exact in int64 (no hash, no collision) and codes stay below n.
* ``entropy_from_counts`` is the plug-in estimate by default; ``estimator`` picks Miller–Madow
  Ĥ + (m − 1)/(2 n ln 2), m = observed symbols, or Chao–Shen (:mod:`~headgame.info.estimators`).
  ``miller_madow=True`` is the older spelling of ``estimator="miller-madow"``.
* Bootstrap over sequences (not positions): each resample gives every sequence a multiplicity,
  and the symbol counts of all resamples come from one sparse product (:class:`Bootstrap`).
  Every estimator works per resample; Chao–Shen's goes through dense counts (slower).
* ``subset_entropy_table`` returns H(X_S) for all 2^H subsets, indexed by bitmask (bit i =
  head i), visiting the subsets depth-first so that memory stays at H codes of length n.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from headgame.info import estimators as _estimators
from headgame.info.estimators import estimate, resolve_estimator

LN2 = math.log(2.0)
ESTIMATORS: tuple[str, ...] = _estimators.ESTIMATORS  # the names ``estimator=`` accepts here


def entropy_from_counts(
    counts: torch.Tensor | np.ndarray, *, miller_madow: bool = False, estimator: str | None = None
) -> torch.Tensor:
    """Entropy in bits [...] (float64) of the distribution given by non-negative ``counts`` [..., m].

    ``estimator`` is one of :data:`ESTIMATORS` (default ``plugin``); ``miller_madow=True`` means
    ``estimator="miller-madow"`` and contradicting it raises ValueError. n = 0 gives 0.
    """
    est = resolve_estimator(estimator, miller_madow)
    return torch.from_numpy(estimate(counts, est))


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def dense_column(x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, int]:
    """Dense codes [n] of one column of integer symbols (any sign, any size) and their number m.

    Codes number the distinct values 0..m−1 in ascending order, so joining dense columns
    orders joint symbols exactly as the raw tuples would be ordered.
    """
    a = _np(x).astype(np.int64, copy=False).reshape(-1)
    values, inverse = np.unique(a, return_inverse=True)
    return inverse.reshape(-1), int(values.shape[0])


def dense_codes(x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense joint codes of the rows of ``x`` [n, k] (or [n]); returns (codes [n], counts [m])."""
    a = _np(x).astype(np.int64, copy=False).reshape(len(x), -1)  # [n] -> [n, 1]
    _, code, counts = np.unique(a[:, 0], return_inverse=True, return_counts=True)
    code, counts = torch.from_numpy(code.reshape(-1)), torch.from_numpy(counts)
    for c in range(1, a.shape[1]):
        code, counts = combine(code, a[:, c])
    return code, counts


def combine(
    code: torch.Tensor | np.ndarray, x: torch.Tensor | np.ndarray, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint dense code of (code, x) per observation; returns (codes [n], counts [m]).

    ``code`` is dense (0 ≤ code < n). ``x`` holds any integer symbols; pass ``size`` only when
    ``x`` is already dense with values below ``size`` (a :func:`dense_column` result), which
    skips densifying it again. Then ``code·size + x`` < n² is exact in int64.
    """
    if size is None:
        xd, size = dense_column(x)
    else:
        xd = _np(x).astype(np.int64, copy=False).reshape(-1)
    mixed = _np(code).astype(np.int64, copy=False).reshape(-1) * size + xd
    _, inverse, counts = np.unique(mixed, return_inverse=True, return_counts=True)
    return torch.from_numpy(inverse.reshape(-1)), torch.from_numpy(counts)


def entropy_of_codes(
    code: torch.Tensor,
    counts: torch.Tensor,
    boot: "Bootstrap | None" = None,
    *,
    miller_madow: bool = False,
    estimator: str | None = None,
) -> tuple[float, torch.Tensor | None]:
    """Entropy (bits) of dense codes: the point estimate and, with ``boot``, one per resample [R]."""
    est = resolve_estimator(estimator, miller_madow)
    h = float(entropy_from_counts(counts, estimator=est))
    if boot is None:
        return h, None
    return h, boot.entropies(code, int(counts.shape[0]), estimator=est)


def entropy(x: torch.Tensor, *, miller_madow: bool = False, estimator: str | None = None) -> float:
    """Entropy in bits (plug-in unless ``estimator``) of the joint symbols of the rows of ``x`` [n, k] (or [n])."""
    if x.shape[0] == 0:
        raise ValueError("entropy of zero observations is undefined; pass at least one observation")
    _, counts = dense_codes(x)
    return float(entropy_from_counts(counts, miller_madow=miller_madow, estimator=estimator))


def mutual_information(x: torch.Tensor, y: torch.Tensor) -> float:
    """I(X; Y) = H(X) + H(Y) − H(X, Y) in bits (plug-in); rows are observations."""
    xy = torch.cat([x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)], dim=1)
    return entropy(x) + entropy(y) - entropy(xy)


def conditional_mutual_information(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> float:
    """I(X; Y | Z) = H(X,Z) + H(Y,Z) − H(X,Y,Z) − H(Z) in bits (plug-in)."""
    x2, y2, z2 = (t.reshape(t.shape[0], -1) for t in (x, y, z))
    return entropy(torch.cat([x2, z2], 1)) + entropy(torch.cat([y2, z2], 1)) - entropy(torch.cat([x2, y2, z2], 1)) - entropy(z2)


def interaction_information(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> float:
    """McGill's interaction information, synergy-positive: I(X;Y|Z) − I(X;Y) (McGill 1954).

    Negative = redundancy (the three share information); positive = synergy.
    """
    return conditional_mutual_information(x, y, z) - mutual_information(x, y)


# --------------------------------------------------------------------------- bootstrap


class Bootstrap:
    """Resamples over sequences: every resample draws S sequences with replacement
    (positions of one sequence are dependent, so resampling positions would make the CIs too narrow).

    ``mult`` [R, S] holds each sequence's multiplicity per resample. The symbol counts of all
    resamples come from one sparse product, counts[m, R] = C[m, S] @ multᵀ, where C counts each
    symbol within each sequence; the entropies then use a table of c·log2 c (counts are integers).
    """

    def __init__(self, seq: torch.Tensor | np.ndarray, n_resamples: int, *, seed: int = 0) -> None:
        self.seq = _np(seq).astype(np.int64).reshape(-1)
        self.n_seq = int(self.seq.max()) + 1 if self.seq.size else 0
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, max(self.n_seq, 1), size=(n_resamples, self.n_seq))  # [R, S]
        self.mult = np.zeros((n_resamples, self.n_seq))
        np.add.at(self.mult, (np.arange(n_resamples)[:, None], draws), 1.0)
        self.n_resamples = n_resamples

    def weights(self) -> torch.Tensor:
        """Observation weights [R, n]: each observation's sequence multiplicity."""
        return torch.from_numpy(self.mult[:, self.seq])

    def _matrix(self, code: torch.Tensor | np.ndarray, m: int):
        import scipy.sparse as sp

        # C[symbol, sequence] = occurrences; duplicates are summed by the CSR constructor
        return sp.csr_matrix((np.ones(self.seq.size), (_np(code).reshape(-1), self.seq)), shape=(m, self.n_seq))

    def counts(self, code: torch.Tensor | np.ndarray, m: int) -> np.ndarray:
        """Symbol counts of every resample, [R, m]."""
        return np.asarray(self._matrix(code, m) @ self.mult.T).T  # [m, S] @ [S, R] -> [m, R] -> [R, m]

    def entropies(
        self, code: torch.Tensor | np.ndarray, m: int, *, miller_madow: bool = False, estimator: str | None = None
    ) -> torch.Tensor:
        """Entropy of the symbols in every resample, [R]; plug-in as log2 n − Σ c·log2 c / n.

        A symbol seen in one sequence only (most joint symbols of high order) has count w·c in a
        resample giving that sequence multiplicity w, so its c·log2 c term is
        w·(c log2 c) + (w log2 w)·c: summed per sequence, those symbols cost O(R·S) in all.
        Symbols spread over several sequences get their resample counts from the sparse product.
        Chao–Shen's coverage ties every symbol of a resample to its singleton count, which that
        per-sequence sum cannot carry, so it estimates from dense counts, a block of resamples at a time.
        """
        est = resolve_estimator(estimator, miller_madow)
        if est == "chao-shen":
            return self._dense_entropies(code, m, est)
        miller_madow = est == "miller-madow"
        c = self._matrix(code, m)
        per_row = np.diff(c.indptr)
        single = per_row == 1
        w = self.mult  # [R, S]
        wlogw = w * np.log2(np.maximum(w, 1.0))
        rows = np.repeat(single, per_row)  # entry -> its row is single-sequence
        seq_single, cnt_single = c.indices[rows], c.data[rows]
        a = np.bincount(seq_single, weights=cnt_single * np.log2(cnt_single), minlength=self.n_seq)  # [S]
        b = np.bincount(seq_single, weights=cnt_single, minlength=self.n_seq)  # [S]
        s = w @ a + wlogw @ b  # [R]
        n_obs_seq = np.bincount(self.seq, minlength=self.n_seq).astype(np.float64)
        n = w @ n_obs_seq  # [R]
        n_single = np.bincount(seq_single, minlength=self.n_seq).astype(np.float64)  # symbols per sequence
        distinct = (w > 0).astype(np.float64) @ n_single if miller_madow else None
        multi = c[~single]
        if multi.shape[0]:
            mc = np.rint(np.asarray(multi @ w.T)).astype(np.int64)  # [m_multi, R]
            top = int(mc.max())
            grid = np.arange(top + 1, dtype=np.float64)
            s = s + (grid * np.log2(np.maximum(grid, 1.0)))[mc].sum(0)
            if miller_madow:
                distinct = distinct + (mc > 0).sum(0)
        nn = np.maximum(n, 1.0)
        h = np.where(n > 0, np.log2(nn) - s / nn, 0.0)
        if miller_madow:
            h = h + (distinct - 1.0) / (2.0 * nn * LN2)
        return torch.from_numpy(h)

    def _dense_entropies(self, code: torch.Tensor | np.ndarray, m: int, est: str, block_elems: int = 1 << 22) -> torch.Tensor:
        c = self._matrix(code, m)
        out = np.empty(self.n_resamples, dtype=np.float64)
        step = max(1, block_elems // max(m, 1))  # bounds the dense [r, m] block to ~32 MB
        for r0 in range(0, self.n_resamples, step):
            block = np.asarray(c @ self.mult[r0 : r0 + step].T).T  # [r, m]
            out[r0 : r0 + step] = estimate(np.rint(block), est)
        return torch.from_numpy(out)


def bootstrap_weights(seq: torch.Tensor, n_resamples: int, *, seed: int = 0) -> torch.Tensor:
    """Observation weights [R, n] of ``n_resamples`` bootstrap resamples over sequences."""
    return Bootstrap(seq, n_resamples, seed=seed).weights()


def percentile_ci(samples: torch.Tensor, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile interval over the first axis of ``samples`` [R, ...]."""
    a = (1.0 - level) / 2.0
    s = samples.to(torch.float64)
    return torch.quantile(s, a, dim=0), torch.quantile(s, 1.0 - a, dim=0)


def basic_ci(samples: torch.Tensor, estimate: torch.Tensor | float, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Basic (reverse-percentile) bootstrap interval [2θ̂ − q_hi, 2θ̂ − q_lo].

    It reflects the bootstrap distribution about the estimate θ̂, so a shift of the resampled
    statistics away from θ̂ is read as the estimator's bias and corrected for. That is the case
    here: a resample repeats sequences, which lowers plug-in joint entropies and moves every
    entropy-based quantity the same way; the percentile interval then need not contain θ̂.
    """
    lo, hi = percentile_ci(samples, level)
    est = torch.as_tensor(estimate, dtype=torch.float64)
    return 2.0 * est - hi, 2.0 * est - lo


CI_METHODS = ("basic", "percentile")


def bootstrap_ci(samples: torch.Tensor, estimate: torch.Tensor | float, level: float = 0.95, method: str = "basic",
                 bounds: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``method`` interval (``basic`` or ``percentile``), clipped to ``bounds`` when given."""
    if method == "basic":
        lo, hi = basic_ci(samples, estimate, level)
    elif method == "percentile":
        lo, hi = percentile_ci(samples, level)
    else:
        raise ValueError(f"unknown bootstrap interval {method!r}; use one of {CI_METHODS}")
    if bounds is not None:
        lo, hi = lo.clamp(*bounds), hi.clamp(*bounds)
    return lo, hi


# --------------------------------------------------------------------------- subsets


def popcount(mask: int) -> int:
    return bin(mask).count("1")


def members(mask: int) -> list[int]:
    """Heads in bitmask ``mask`` (bit i = head i), ascending."""
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def _dfs_masks(n_heads: int) -> Iterator[tuple[int, int, int]]:
    """(mask, parent, new head) for every non-empty subset; a parent is visited before its children."""
    stack = [(1 << i, 0, i) for i in reversed(range(n_heads))]
    while stack:
        mask, parent, head = stack.pop()
        yield mask, parent, head
        for j in reversed(range(head + 1, n_heads)):
            stack.append((mask | 1 << j, mask, j))


def subset_entropy_table(x: torch.Tensor, *, miller_madow: bool = False, estimator: str | None = None) -> torch.Tensor:
    """H(X_S) in bits for every subset S of the columns of ``x`` [n, H], indexed by bitmask.

    Entry 0 (the empty set) is 0. Cost: 2^H − 1 ``np.unique`` calls on n codes; memory: at
    most H live code vectors (depth-first order).
    """
    n, n_heads = x.shape
    if n == 0:
        raise ValueError("no observations; pass at least one")
    est = resolve_estimator(estimator, miller_madow)
    table = torch.zeros(1 << n_heads, dtype=torch.float64)
    cols = [dense_column(x[:, h]) for h in range(n_heads)]  # densified once, joined 2^H − 1 times
    codes: dict[int, torch.Tensor] = {0: torch.zeros(n, dtype=torch.int64)}
    for mask, parent, head in _dfs_masks(n_heads):
        code, counts = combine(codes[parent], *cols[head])
        table[mask] = entropy_from_counts(counts, estimator=est)
        codes[mask] = code
        # a finished branch's codes are never needed again: keep only the current path
        for stale in [m for m in codes if m and m != mask and (mask & m) != m]:
            del codes[stale]
    return table


@dataclass
class LowOrderEntropies:
    """Entropies of all subsets of size ≤ 3 (symmetric arrays), optionally per resample."""

    h1: torch.Tensor  # [H]
    h2: torch.Tensor  # [H, H], h2[i, i] = h1[i]
    h3: torch.Tensor  # [H, H, H], symmetric in its three indices (defined for distinct i, j, k)
    boot1: torch.Tensor | None = None  # [R, H]
    boot2: torch.Tensor | None = None  # [R, H, H]
    boot3: torch.Tensor | None = None  # [R, H, H, H]
    n: int = 0

    @property
    def n_heads(self) -> int:
        return int(self.h1.shape[0])


def _sym_set(t: torch.Tensor, idx: tuple[int, ...], value) -> None:
    from itertools import permutations

    for p in set(permutations(idx)):
        t[(..., *p)] = value


def low_order_entropies(
    x: torch.Tensor,
    *,
    miller_madow: bool = False,
    boot: Bootstrap | None = None,
    max_order: int = 3,
    estimator: str | None = None,
) -> LowOrderEntropies:
    """Entropies of all singletons, pairs and (``max_order`` = 3) triples of the columns of ``x`` [n, H].

    With ``boot`` (a :class:`Bootstrap`) also the same entropies in every bootstrap resample, by
    the same ``estimator``. Pair codes are reused for the triples, one pair at a time.
    """
    n, n_heads = x.shape
    est = resolve_estimator(estimator, miller_madow)
    r = None if boot is None else boot.n_resamples
    h1 = torch.zeros(n_heads, dtype=torch.float64)
    h2 = torch.zeros(n_heads, n_heads, dtype=torch.float64)
    h3 = torch.zeros(n_heads, n_heads, n_heads, dtype=torch.float64)
    b1 = b2 = b3 = None
    if r is not None:
        b1 = torch.zeros(r, n_heads, dtype=torch.float64)
        b2 = torch.zeros(r, n_heads, n_heads, dtype=torch.float64)
        b3 = torch.zeros(r, n_heads, n_heads, n_heads, dtype=torch.float64) if max_order >= 3 else None
    single = []
    cols = [dense_column(x[:, h]) for h in range(n_heads)]
    for i in range(n_heads):
        code, counts = dense_codes(x[:, i])
        single.append(code)
        h, hb = entropy_of_codes(code, counts, boot, estimator=est)
        h1[i] = h2[i, i] = h
        if hb is not None:
            b1[:, i] = hb
            b2[:, i, i] = hb
    if max_order >= 2:
        for i in range(n_heads):
            for j in range(i + 1, n_heads):
                code_ij, counts = combine(single[i], *cols[j])
                h, hb = entropy_of_codes(code_ij, counts, boot, estimator=est)
                h2[i, j] = h2[j, i] = h
                if hb is not None:
                    b2[:, i, j] = b2[:, j, i] = hb
                if max_order < 3:
                    continue
                for k in range(j + 1, n_heads):
                    code_ijk, counts = combine(code_ij, *cols[k])
                    h, hb = entropy_of_codes(code_ijk, counts, boot, estimator=est)
                    _sym_set(h3, (i, j, k), h)
                    if hb is not None:
                        _sym_set(b3, (i, j, k), hb)
    return LowOrderEntropies(h1, h2, h3, b1, b2, b3, n=n)
