"""Entropy estimators (plug-in, Miller–Madow, Chao–Shen) and the exact Shapley value of the
entropy game, against hand arithmetic and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from headgame.info.analysis import InfoOptions, analyse_layer
from headgame.info.entropy import (
    ESTIMATORS,
    Bootstrap,
    dense_codes,
    entropy_from_counts,
    low_order_entropies,
    subset_entropy_table,
)
from headgame.info.scores import shapley_exact


def brute_chao_shen(counts) -> float:
    """Chao–Shen in bits, one symbol at a time in plain Python (Chao & Shen 2003)."""
    counts = [int(c) for c in counts if c > 0]
    n = sum(counts)
    if n == 0:
        return 0.0
    f1 = sum(1 for c in counts if c == 1)
    if f1 == n:
        f1 = n - 1
    cov = 1 - f1 / n
    h = 0.0
    for c in counts:
        p = cov * c / n
        h -= p * math.log2(p) / (1 - (1 - p) ** n)
    return h


def brute_shapley(v, n_heads: int) -> list[float]:
    """Average marginal contribution over all n! orders of the heads."""
    phi = [0.0] * n_heads
    perms = list(itertools.permutations(range(n_heads)))
    for order in perms:
        mask = 0
        for i in order:
            phi[i] += float(v[mask | 1 << i]) - float(v[mask])
            mask |= 1 << i
    return [p / len(perms) for p in phi]


def joint_counts(x: np.ndarray, cols: list[int]) -> np.ndarray:
    return np.unique(x[:, cols], axis=0, return_counts=True)[1]


# --------------------------------------------------------------------------- estimators


def test_estimator_names():
    assert ESTIMATORS == ("plugin", "miller-madow", "chao-shen")


def test_chao_shen_hand_worked():
    # counts [3, 1, 1, 0]: n = 5, f1 = 2 singletons, coverage C = 1 − 2/5 = 0.6
    # p̂ = 0.6·3/5 = 0.36 and 0.6·1/5 = 0.12 (twice); the absent symbol contributes nothing
    # 1 − (1 − 0.36)^5 = 1 − 0.64^5 = 1 − 0.1073741824 = 0.8926258176
    # 1 − (1 − 0.12)^5 = 1 − 0.88^5 = 1 − 0.5277319168 = 0.4722680832
    expected = -0.36 * math.log2(0.36) / 0.8926258176 - 2 * 0.12 * math.log2(0.12) / 0.4722680832
    assert expected == pytest.approx(2.148930, abs=1e-5)
    got = float(entropy_from_counts(torch.tensor([3, 1, 1, 0]), estimator="chao-shen"))
    assert got == pytest.approx(expected, rel=1e-12)
    assert brute_chao_shen([3, 1, 1, 0]) == pytest.approx(expected, rel=1e-12)


def test_chao_shen_all_singletons_and_degenerate():
    # counts [1, 1, 1]: f1 = n = 3 → f1 = 2, C = 1/3, p̂ = 1/9 each; 1 − (8/9)^3 = 217/729
    # H = 3 · (1/9)·log2 9 / (217/729) = (243/217)·log2 9
    got = float(entropy_from_counts(np.array([1, 1, 1]), estimator="chao-shen"))
    assert got == pytest.approx(243 / 217 * math.log2(9), rel=1e-12)
    # one observation: f1 = n = 1 → f1 = 0, C = 1, p̂ = 1: no uncertainty
    assert float(entropy_from_counts(np.array([1, 0]), estimator="chao-shen")) == 0.0
    # one symbol seen many times: p̂ = 1, H = 0; no observations at all: 0
    assert float(entropy_from_counts(np.array([7]), estimator="chao-shen")) == 0.0
    for est in ESTIMATORS:
        assert float(entropy_from_counts(np.zeros(4), estimator=est)) == 0.0


def test_chao_shen_vectorised():
    rows = np.array([[3, 1, 1, 0], [1, 1, 1, 0], [2, 2, 5, 9]])
    h = entropy_from_counts(rows, estimator="chao-shen")
    assert h.dtype == torch.float64 and h.shape == (3,)
    for r in range(3):
        assert float(h[r]) == pytest.approx(float(entropy_from_counts(rows[r], estimator="chao-shen")), rel=1e-12)
        assert float(h[r]) == pytest.approx(brute_chao_shen(rows[r]), rel=1e-12)
    cube = entropy_from_counts(np.stack([rows[:2], rows[1:]]), estimator="chao-shen")  # [2, 2, m]
    assert cube.shape == (2, 2)
    np.testing.assert_allclose(cube.numpy(), [[h[0], h[1]], [h[1], h[2]]], rtol=1e-12)


def test_chao_shen_corrects_undersampling_upward():
    rng = np.random.default_rng(0)
    counts = np.bincount(rng.integers(0, 200, size=60), minlength=200)  # 60 draws of 200 symbols
    plug = float(entropy_from_counts(counts))
    cs = float(entropy_from_counts(counts, estimator="chao-shen"))
    assert plug < cs
    assert abs(cs - math.log2(200)) < abs(plug - math.log2(200))  # closer to the truth, log2 200


def test_all_estimators_converge_on_a_large_sample():
    p = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    truth = -sum(q * math.log2(q) for q in p)
    counts = np.bincount(np.random.default_rng(7).choice(5, size=200_000, p=p), minlength=5)
    for est in ESTIMATORS:
        assert float(entropy_from_counts(counts, estimator=est)) == pytest.approx(truth, abs=0.01), est


def test_miller_madow_by_name_equals_the_flag():
    counts = torch.tensor([3, 1, 1, 0])
    # plug-in: log2 5 − 3·log2 3 / 5; Miller–Madow adds (m − 1)/(2 n ln 2) with m = 3, n = 5
    hand = math.log2(5) - 3 * math.log2(3) / 5 + (3 - 1) / (2 * 5 * math.log(2))
    by_name = float(entropy_from_counts(counts, estimator="miller-madow"))
    assert by_name == pytest.approx(hand, rel=1e-12)
    assert by_name == float(entropy_from_counts(counts, miller_madow=True))
    assert float(entropy_from_counts(counts, miller_madow=True, estimator="miller-madow")) == by_name


def test_bad_estimator_arguments():
    with pytest.raises(ValueError, match="chao-shen"):
        entropy_from_counts(np.array([1, 2]), estimator="bogus")
    with pytest.raises(ValueError, match="contradicts"):
        entropy_from_counts(np.array([1, 2]), miller_madow=True, estimator="chao-shen")
    with pytest.raises(ValueError, match="plugin"):
        InfoOptions(estimator="bogus")
    with pytest.raises(ValueError, match="contradicts"):
        InfoOptions(miller_madow=True, estimator="chao-shen")
    assert InfoOptions(miller_madow=True).entropy_estimator() == "miller-madow"
    assert InfoOptions().entropy_estimator() == "plugin"


# --------------------------------------------------------------------------- tables


@pytest.fixture
def small() -> np.ndarray:
    return np.random.default_rng(11).integers(-2, 2, size=(40, 4))


def test_subset_table_chao_shen_matches_brute_force(small):
    table = subset_entropy_table(torch.from_numpy(small), estimator="chao-shen")
    assert float(table[0]) == 0.0
    for mask in range(1, 16):
        cols = [i for i in range(4) if mask >> i & 1]
        assert float(table[mask]) == pytest.approx(brute_chao_shen(joint_counts(small, cols)), rel=1e-12), cols


def test_low_order_chao_shen_matches_brute_force(small):
    lo = low_order_entropies(torch.from_numpy(small), estimator="chao-shen")
    assert float(lo.h1[2]) == pytest.approx(brute_chao_shen(joint_counts(small, [2])), rel=1e-12)
    assert float(lo.h2[3, 1]) == pytest.approx(brute_chao_shen(joint_counts(small, [1, 3])), rel=1e-12)
    assert float(lo.h3[2, 0, 3]) == pytest.approx(brute_chao_shen(joint_counts(small, [0, 2, 3])), rel=1e-12)


def test_bootstrap_chao_shen_equals_explicit_resampling(small):
    seq = torch.arange(small.shape[0]) // 5  # 8 sequences of 5 observations
    boot = Bootstrap(seq, 5, seed=2)
    code, counts = dense_codes(small[:, :2])
    fast = boot.entropies(code, len(counts), estimator="chao-shen")
    for r in range(5):
        idx = np.concatenate([np.tile(np.flatnonzero(boot.seq == s), int(boot.mult[r, s])) for s in range(boot.n_seq)])
        assert float(fast[r]) == pytest.approx(brute_chao_shen(joint_counts(small[idx], [0, 1])), rel=1e-12)
    lo = low_order_entropies(torch.from_numpy(small), estimator="chao-shen", boot=boot)
    np.testing.assert_allclose(lo.boot2[:, 0, 1].numpy(), fast.numpy(), rtol=1e-12)


# --------------------------------------------------------------------------- exact Shapley


def test_shapley_exact_random_table_brute_force():
    table = torch.from_numpy(np.random.default_rng(5).normal(size=16))
    table[0] = 0.0
    phi = shapley_exact(table)
    np.testing.assert_allclose(phi.numpy(), brute_shapley(table, 4), rtol=1e-12, atol=1e-12)
    assert float(phi.sum()) == pytest.approx(float(table[15]), rel=1e-12)  # efficiency


def test_shapley_exact_entropy_table_brute_force():
    x = torch.from_numpy(np.random.default_rng(6).integers(0, 3, size=(80, 5)))
    table = subset_entropy_table(x)
    phi = shapley_exact(table)
    np.testing.assert_allclose(phi.numpy(), brute_shapley(table, 5), rtol=1e-12, atol=1e-12)
    assert float(phi.sum()) == pytest.approx(float(table[31]), rel=1e-12)


def test_shapley_exact_symmetry_and_dummy():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 4, size=(100, 4))
    x[:, 2] = x[:, 0]  # heads 0 and 2 are interchangeable
    x[:, 3] = 5  # head 3 adds nothing to any coalition
    phi = shapley_exact(subset_entropy_table(torch.from_numpy(x)))
    assert float(phi[0]) == pytest.approx(float(phi[2]), rel=1e-12)
    assert float(phi[3]) == pytest.approx(0.0, abs=1e-12)
    assert shapley_exact(torch.zeros(1)).shape == (0,)
    with pytest.raises(ValueError):
        shapley_exact(torch.zeros(6))


def test_analyse_layer_chao_shen_and_exact_shapley():
    rng = np.random.default_rng(9)
    x = rng.integers(0, 3, size=(150, 6))
    x[:, 4] = (x[:, 0] + x[:, 1]) % 3
    seq = torch.arange(150) // 10
    info = analyse_layer(0, torch.from_numpy(x), seq, 64, InfoOptions(estimator="chao-shen", bootstrap=0, mcmc_steps=0))
    assert info.h_full == pytest.approx(brute_chao_shen(joint_counts(x, list(range(6)))), rel=1e-12)
    assert float(info.ent.h1[4]) == pytest.approx(brute_chao_shen(joint_counts(x, [4])), rel=1e-12)
    phi = info.scores["shapley-exact"]
    assert phi.shape == (6,)
    assert float(phi.sum()) == pytest.approx(info.h_full, rel=1e-12)
    plug = analyse_layer(0, torch.from_numpy(x), seq, 64, InfoOptions(bootstrap=0, mcmc_steps=0))
    assert plug.h_full < info.h_full  # 150 observations of up to 3^5 joint symbols: undersampled
    wide = analyse_layer(0, torch.from_numpy(x), seq, 64, InfoOptions(bootstrap=0, mcmc_steps=0, full_max_heads=3))
    assert "shapley-exact" not in wide.scores
