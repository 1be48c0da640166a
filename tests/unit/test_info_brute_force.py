"""GT-FEP maths against brute force from the definitions, with Python tuples and Counter.

* Joint entropies, mutual and interaction information for any integer symbols: negative,
  large, at the int64 limits (a joint code must never merge two different tuples).
* The order-3 marginal contribution m_i^(≤3) = H_i − Σ_j D({i,j}) − Σ_{j<k} D({i,j,k}) for 4 to 6
  heads, with the Harsanyi dividends D(S) = Σ_{T⊆S} (−1)^{|S|−|T|} F(T) of the coalition free
  energy F(S) = |S|·log2 K − H(X_S) summed subset by subset (the GT-FEP paper's dividends).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from headgame.info.analysis import InfoOptions, analyse_layer
from headgame.info.dividends import pair_dividends, triple_dividends
from headgame.info.entropy import (
    entropy,
    interaction_information,
    low_order_entropies,
    mutual_information,
    subset_entropy_table,
)
from headgame.info.scores import fep_order3

I64 = np.iinfo(np.int64)


def h_brute(rows) -> float:
    """Plug-in entropy (bits) of a list of hashable observations."""
    n = len(rows)
    return -sum(c / n * math.log2(c / n) for c in Counter(rows).values())


def tuples(x: np.ndarray, cols) -> list[tuple]:
    return [tuple(int(v) for v in row) for row in x[:, list(cols)]]


def symbols(kind: str, n: int, k: int, seed: int) -> np.ndarray:
    """[n, k] int64 symbols with few distinct values per column (so entropies are not all log2 n)."""
    rng = np.random.default_rng(seed)
    if kind == "negative":
        pool = np.arange(-4, 4)
    elif kind == "large":
        pool = np.array([-(2**62), -(2**40) - 3, -1, 0, 7, 2**40, 2**61 + 5, 2**62])
    else:  # the int64 limits next to small values
        pool = np.array([I64.min, I64.min + 1, -2, 0, 1, I64.max - 1, I64.max])
    x = rng.choice(pool, size=(n, k))
    x[:, 1:] = np.where(rng.random((n, k - 1)) < 0.5, x[:, :1], x[:, 1:])  # dependence on column 0
    return x.astype(np.int64)


def test_entropy_of_rows_with_negative_symbols_is_exact():
    # rows (1, −1) and (0, 2) are different tuples: one bit, not a merged code with 0 bits
    assert entropy(torch.tensor([[1, -1], [0, 2]])) == pytest.approx(1.0, abs=1e-12)
    x = torch.tensor([[0, -1], [-1, 0], [0, 0], [-1, -1]])
    assert entropy(x) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["negative", "large", "limits"])
@pytest.mark.parametrize("seed", [0, 1])
def test_entropy_mi_and_interaction_match_brute_force(kind, seed):
    x = symbols(kind, 400, 3, seed)
    t = torch.from_numpy(x)
    for cols in [(0,), (1,), (0, 1), (1, 2), (0, 1, 2)]:
        assert entropy(t[:, list(cols)]) == pytest.approx(h_brute(tuples(x, cols)), abs=1e-9), cols
    hx, hy, hz = (h_brute(tuples(x, (c,))) for c in range(3))
    hxy, hxz, hyz, hxyz = (h_brute(tuples(x, c)) for c in [(0, 1), (0, 2), (1, 2), (0, 1, 2)])
    mi = hx + hy - hxy
    cmi = hxz + hyz - hxyz - hz  # I(X;Y|Z)
    assert mutual_information(t[:, 0], t[:, 1]) == pytest.approx(mi, abs=1e-9)
    assert interaction_information(t[:, 0], t[:, 1], t[:, 2]) == pytest.approx(cmi - mi, abs=1e-9)


@pytest.mark.parametrize("kind", ["negative", "large", "limits"])
def test_subset_and_low_order_tables_match_brute_force_for_any_symbols(kind):
    x = symbols(kind, 300, 4, seed=5)
    t = torch.from_numpy(x)
    table = subset_entropy_table(t)
    low = low_order_entropies(t)
    for mask in range(1, 16):
        cols = [i for i in range(4) if mask >> i & 1]
        assert float(table[mask]) == pytest.approx(h_brute(tuples(x, cols)), abs=1e-9), cols
    for i, j, k in itertools.combinations(range(4), 3):
        assert float(low.h2[i, j]) == pytest.approx(h_brute(tuples(x, (i, j))), abs=1e-9)
        assert float(low.h3[k, i, j]) == pytest.approx(h_brute(tuples(x, (i, j, k))), abs=1e-9)


# --------------------------------------------------------------------------- m_i for 4-6 heads


def brute_scores(x: np.ndarray, alphabet_size: int) -> dict[str, np.ndarray]:
    """m_i^(≤3), the order-3 Shapley value and the exact m_i, from explicit sums over subsets."""
    n_heads = x.shape[1]
    log2_k = math.log2(alphabet_size)
    heads = range(n_heads)
    h = {(): 0.0}
    for size in range(1, n_heads + 1):
        for s in itertools.combinations(heads, size):
            h[s] = h_brute(tuples(x, s))

    def free_energy(s: tuple) -> float:  # F(S) = |S|·log2 K − H(X_S), F(∅) = 0
        return len(s) * log2_k - h[s] if s else 0.0

    def dividend(s: tuple) -> float:  # D(S) = Σ_{T⊆S} (−1)^{|S|−|T|} F(T)
        return sum((-1) ** (len(s) - r) * free_energy(t) for r in range(len(s) + 1) for t in itertools.combinations(s, r))

    m3, shap, exact = np.zeros(n_heads), np.zeros(n_heads), np.zeros(n_heads)
    full = tuple(heads)
    for i in heads:
        others = [j for j in heads if j != i]
        d2 = sum(dividend(tuple(sorted((i, j)))) for j in others)
        d3 = sum(dividend(tuple(sorted((i, j, k)))) for j, k in itertools.combinations(others, 2))
        m3[i] = h[(i,)] - d2 - d3
        shap[i] = h[(i,)] - d2 / 2 - d3 / 3
        exact[i] = h[full] - h[tuple(others)]
    return {"fep": m3, "shapley": shap, "fep-exact": exact}


def correlated_heads(n_heads: int, n: int, seed: int) -> np.ndarray:
    """Heads that copy an earlier head with noise: pairs share information, triples are redundant."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, n_heads), dtype=np.int64)
    x[:, 0] = rng.integers(0, 6, n)
    for h in range(1, n_heads):
        src = x[:, rng.integers(0, h)]
        x[:, h] = np.where(rng.random(n) < 0.6, src, rng.integers(0, 6, n))
    return x


@pytest.mark.parametrize("n_heads", [4, 5, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("full_max_heads", [12, 0])  # with and without the 2^H subset table
def test_order3_marginal_contribution_matches_brute_force(n_heads, seed, full_max_heads):
    x = correlated_heads(n_heads, 500, seed)
    want = brute_scores(x, alphabet_size=8)
    t = torch.from_numpy(x)
    opts = InfoOptions(bootstrap=0, mcmc_steps=0, full_max_heads=full_max_heads)
    info = analyse_layer(0, t, torch.arange(500) // 10, 8, opts)
    for name in ("fep", "shapley", "fep-exact"):
        np.testing.assert_allclose(info.scores[name], want[name], rtol=0, atol=1e-9, err_msg=name)
    low = low_order_entropies(t)
    m = fep_order3(low.h1, pair_dividends(low.h1, low.h2), triple_dividends(low.h1, low.h2, low.h3))
    np.testing.assert_allclose(m.numpy(), want["fep"], rtol=0, atol=1e-9)
    # the truncation is not the exact conditional entropy once there are more than three heads
    assert not np.allclose(want["fep"], want["fep-exact"], atol=1e-6)
