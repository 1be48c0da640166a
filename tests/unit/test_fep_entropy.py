"""Entropies, mutual and interaction information against hand and brute-force computations."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from headgame.info.entropy import (
    Bootstrap,
    conditional_mutual_information,
    dense_codes,
    entropy,
    entropy_from_counts,
    interaction_information,
    low_order_entropies,
    members,
    mutual_information,
    subset_entropy_table,
)


def brute_entropy(rows: list[tuple]) -> float:
    """Plug-in entropy in bits from explicit frequencies (independent of the code under test)."""
    n = len(rows)
    return -sum(c / n * math.log2(c / n) for c in Counter(rows).values())


def brute_mi(x, y) -> float:
    """Σ p(x,y) log p(x,y)/(p(x)p(y)) from explicit probabilities."""
    n = len(x)
    pxy, px, py = Counter(zip(x, y)), Counter(x), Counter(y)
    return sum(c / n * math.log2((c / n) / (px[a] / n * py[b] / n)) for (a, b), c in pxy.items())


def brute_cmi(x, y, z) -> float:
    """Σ p(x,y,z) log p(z)p(x,y,z)/(p(x,z)p(y,z))."""
    n = len(x)
    pxyz, pxz, pyz, pz = Counter(zip(x, y, z)), Counter(zip(x, z)), Counter(zip(y, z)), Counter(z)
    return sum(c / n * math.log2((pz[k] / n) * (c / n) / ((pxz[(a, k)] / n) * (pyz[(b, k)] / n))) for (a, b, k), c in pxyz.items())


def col(t: torch.Tensor, i: int) -> list[int]:
    return t[:, i].tolist()


@pytest.fixture
def sample() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    n = 600
    a = torch.randint(0, 4, (n,), generator=g)
    b = (a + torch.randint(0, 2, (n,), generator=g)) % 4  # correlated with a
    c = torch.randint(0, 3, (n,), generator=g)
    d = (a + c) % 3  # synergistic with a and c
    e = torch.randint(0, 6, (n,), generator=g)
    return torch.stack([a, b, c, d, e], dim=1)


def test_entropy_hand_values():
    assert entropy(torch.tensor([0, 1, 2, 3])) == pytest.approx(2.0)
    assert entropy(torch.tensor([5, 5, 5])) == pytest.approx(0.0)
    # p = (1/4, 1/4, 1/2): H = 1.5 bits
    assert float(entropy_from_counts(torch.tensor([1, 1, 2]))) == pytest.approx(1.5)
    # weighted counts of several distributions at once
    h = entropy_from_counts(np.array([[1, 1, 2], [4, 0, 0], [1, 1, 0]]))
    np.testing.assert_allclose(h.numpy(), [1.5, 0.0, 1.0])


def test_miller_madow_correction():
    counts = torch.tensor([3, 1, 1, 0])
    plug = float(entropy_from_counts(counts))
    mm = float(entropy_from_counts(counts, miller_madow=True))
    assert mm - plug == pytest.approx((3 - 1) / (2 * 5 * math.log(2)))


def test_dense_codes_are_exact(sample):
    code, counts = dense_codes(sample[:, :3])
    rows = [tuple(r) for r in sample[:, :3].tolist()]
    assert int(counts.sum()) == len(rows)
    assert len(counts) == len(set(rows))
    for i, j in itertools.combinations(range(0, len(rows), 7), 2):
        assert (code[i] == code[j]) == (rows[i] == rows[j])


def test_entropy_matches_brute_force(sample):
    for cols in [(0,), (0, 1), (1, 2, 3), (0, 1, 2, 3, 4)]:
        rows = [tuple(r) for r in sample[:, list(cols)].tolist()]
        assert entropy(sample[:, list(cols)]) == pytest.approx(brute_entropy(rows), abs=1e-12)


def test_mutual_and_interaction_information_brute_force(sample):
    for i, j, k in itertools.permutations(range(5), 3):
        x, y, z = col(sample, i), col(sample, j), col(sample, k)
        assert mutual_information(sample[:, i], sample[:, j]) == pytest.approx(brute_mi(x, y), abs=1e-12)
        assert conditional_mutual_information(sample[:, i], sample[:, j], sample[:, k]) == pytest.approx(brute_cmi(x, y, z), abs=1e-12)
        ii = interaction_information(sample[:, i], sample[:, j], sample[:, k])
        assert ii == pytest.approx(brute_cmi(x, y, z) - brute_mi(x, y), abs=1e-12)


def test_interaction_information_textbook_cases():
    bits = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    x, y = bits[:, 0], bits[:, 1]
    # XOR: pure synergy, +1 bit (synergy-positive convention of spec §3.4)
    assert interaction_information(x, y, x ^ y) == pytest.approx(1.0)
    # three copies of one fair bit: pure redundancy, -1 bit
    assert interaction_information(x, x, x) == pytest.approx(-1.0)
    # independent variables: 0
    assert interaction_information(x, y, torch.zeros(4, dtype=torch.long)) == pytest.approx(0.0)
    assert mutual_information(x, x) == pytest.approx(1.0)


def test_subset_table_matches_direct_entropies(sample):
    table = subset_entropy_table(sample)
    assert table.shape == (32,) and table[0] == 0
    for mask in range(1, 32):
        assert float(table[mask]) == pytest.approx(entropy(sample[:, members(mask)]), abs=1e-12)
    mm = subset_entropy_table(sample, miller_madow=True)
    for mask in (1, 6, 31):
        _, counts = dense_codes(sample[:, members(mask)])
        assert float(mm[mask]) == pytest.approx(float(entropy_from_counts(counts, miller_madow=True)))


def test_low_order_entropies_symmetric(sample):
    lo = low_order_entropies(sample)
    for i, j, k in itertools.permutations(range(5), 3):
        assert float(lo.h3[i, j, k]) == pytest.approx(entropy(sample[:, [i, j, k]]), abs=1e-12)
        assert float(lo.h2[i, j]) == pytest.approx(entropy(sample[:, [i, j]]), abs=1e-12)


@pytest.mark.parametrize("miller_madow", [False, True])
def test_bootstrap_equals_explicit_resampling(sample, miller_madow):
    seq = torch.arange(sample.shape[0]) // 40  # 15 sequences of 40 observations
    boot = Bootstrap(seq, 6, seed=1)
    code, counts = dense_codes(sample[:, :3])
    fast = boot.entropies(code, len(counts), miller_madow=miller_madow)
    for r in range(6):
        idx = np.concatenate([np.tile(np.flatnonzero(boot.seq == s), int(boot.mult[r, s])) for s in range(boot.n_seq)])
        _, c = dense_codes(sample[idx, :3])
        assert float(fast[r]) == pytest.approx(float(entropy_from_counts(c, miller_madow=miller_madow)), abs=1e-9)
    assert boot.mult.sum(1).tolist() == [15.0] * 6  # S sequences drawn per resample
    lo = low_order_entropies(sample, boot=boot)
    assert lo.boot3.shape == (6, 5, 5, 5)
    code01, counts01 = dense_codes(sample[:, :2])
    np.testing.assert_allclose(lo.boot2[:, 0, 1].numpy(), boot.entropies(code01, len(counts01)).numpy(), atol=1e-12)
    np.testing.assert_allclose(lo.boot2[:, 1, 0].numpy(), lo.boot2[:, 0, 1].numpy())


def test_against_pyitlib_when_installed(sample):
    drv = pytest.importorskip("pyitlib.discrete_random_variable", reason="pyitlib is an optional cross-check")
    a = sample.numpy().T  # pyitlib wants variables as rows
    assert entropy(sample[:, 0]) == pytest.approx(float(drv.entropy(a[0])), abs=1e-9)
    assert mutual_information(sample[:, 0], sample[:, 1]) == pytest.approx(float(drv.information_mutual(a[0], a[1])), abs=1e-9)
    assert interaction_information(sample[:, 0], sample[:, 2], sample[:, 3]) == pytest.approx(
        float(drv.information_interaction(a[[0, 2, 3]])), abs=1e-9
    )


def test_bootstrap_intervals_by_hand():
    from headgame.info.entropy import basic_ci, bootstrap_ci, percentile_ci

    samples = torch.arange(101, dtype=torch.float64)  # quantiles 5 and 95 at level 0.9
    lo, hi = percentile_ci(samples, 0.9)
    assert (float(lo), float(hi)) == pytest.approx((5.0, 95.0))
    lo, hi = basic_ci(samples, 60.0, 0.9)  # reflected about the estimate: 2*60 - 95, 2*60 - 5
    assert (float(lo), float(hi)) == pytest.approx((25.0, 115.0))
    lo, hi = bootstrap_ci(samples / 100, 0.6, 0.9, "basic", bounds=(0.0, 1.0))  # a share stays in [0, 1]
    assert (float(lo), float(hi)) == pytest.approx((0.25, 1.0))
    with pytest.raises(ValueError, match="unknown bootstrap interval"):
        bootstrap_ci(samples, 1.0, 0.9, "bca")
