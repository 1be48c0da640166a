"""Harsanyi dividends: the fast Möbius transform, its inverse, orders 2 and 3, summaries."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from headgame.info import dividends as dv
from headgame.info.entropy import entropy, interaction_information, low_order_entropies, members, mutual_information, subset_entropy_table


def brute_mobius(f: torch.Tensor) -> torch.Tensor:
    """D(S) = Σ_{T⊆S} (−1)^{|S|−|T|} f(T), one subset at a time (the definition)."""
    out = torch.zeros_like(f)
    for s in range(f.shape[-1]):
        t = s
        while True:  # all submasks of s
            out[s] += (-1) ** (bin(s).count("1") - bin(t).count("1")) * f[t]
            if t == 0:
                break
            t = (t - 1) & s
    return out


@pytest.fixture
def heads() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    n = 800
    a = torch.randint(0, 5, (n,), generator=g)
    b = torch.where(torch.rand(n, generator=g) < 0.7, a, torch.randint(0, 5, (n,), generator=g))  # noisy copy of a
    c = torch.where(torch.rand(n, generator=g) < 0.7, a, torch.randint(0, 5, (n,), generator=g))  # another
    d = torch.randint(0, 4, (n,), generator=g)
    return torch.stack([a, b, c, d], dim=1)


def test_mobius_matches_definition_and_round_trips():
    g = torch.Generator().manual_seed(0)
    for n_heads in (1, 3, 5):
        f = torch.randn(1 << n_heads, generator=g, dtype=torch.float64)
        f[0] = 0
        d = dv.mobius(f)
        torch.testing.assert_close(d, brute_mobius(f))
        torch.testing.assert_close(dv.zeta(d), f)
        torch.testing.assert_close(dv.mobius(dv.zeta(f)), f)
    batch = torch.randn(3, 2, 64, generator=g, dtype=torch.float64)  # leading axes are batched
    torch.testing.assert_close(dv.zeta(dv.mobius(batch)), batch)
    torch.testing.assert_close(dv.mobius(batch)[1, 0], brute_mobius(batch[1, 0]))
    with pytest.raises(ValueError):
        dv.mobius(torch.zeros(6))


def test_dividends_sum_to_free_energy(heads):
    table = subset_entropy_table(heads)
    log2_k = 3.0
    d = dv.dividends_table(table, log2_k)
    f = dv.free_energy_table(table, log2_k)
    for s in range(16):
        sub = sum(float(d[t]) for t in range(16) if t & s == t)
        assert sub == pytest.approx(float(f[s]), abs=1e-10)
    # singletons carry the modular term: D({i}) = log2 K − H_i
    for i in range(4):
        assert float(d[1 << i]) == pytest.approx(log2_k - entropy(heads[:, i]))


def test_pairs_are_mutual_information_and_triples_interaction_information(heads):
    table = subset_entropy_table(heads)
    d = dv.dividends_table(table, 2.0)
    lo = low_order_entropies(heads)
    d2 = dv.pair_dividends(lo.h1, lo.h2)
    d3 = dv.triple_dividends(lo.h1, lo.h2, lo.h3)
    for i, j in itertools.combinations(range(4), 2):
        mi = mutual_information(heads[:, i], heads[:, j])
        assert float(d[(1 << i) | (1 << j)]) == pytest.approx(mi, abs=1e-12)
        assert float(d2[i, j]) == pytest.approx(mi, abs=1e-12) and float(d2[i, j]) >= 0
    for trip in itertools.combinations(range(4), 3):
        i, j, k = trip
        ii = interaction_information(heads[:, i], heads[:, j], heads[:, k])
        assert float(d[(1 << i) | (1 << j) | (1 << k)]) == pytest.approx(ii, abs=1e-12)
        # symmetric in i, j, k: all six orders, and the interaction information of every order
        for p in itertools.permutations(trip):
            assert float(d3[p]) == pytest.approx(ii, abs=1e-12)
            assert interaction_information(heads[:, p[0]], heads[:, p[1]], heads[:, p[2]]) == pytest.approx(ii, abs=1e-12)
    # three noisy copies of one variable are redundant: the triple dividend is negative
    assert float(d3[0, 1, 2]) < 0
    assert float(d3[0, 0, 1]) == 0.0  # repeated indices are not triples
    assert dv.triple_values(d3).shape == (4,)
    assert dv.pair_values(d2).shape == (6,)


def test_summarise_triples_and_wilcoxon():
    neg = dv.summarise_triples(-np.linspace(0.1, 1.0, 20))
    assert neg.frac_negative == 1.0 and neg.median < 0 and neg.wilcoxon_p < 0.001
    pos = dv.summarise_triples(np.linspace(0.1, 1.0, 20))
    assert pos.frac_negative == 0.0 and pos.wilcoxon_p > 0.99
    zero = dv.summarise_triples(np.zeros(5))
    assert zero.wilcoxon_p is None
    empty = dv.summarise_triples(np.zeros(0))
    assert empty.n == 0 and math.isnan(empty.mean)


def test_saturation_warning_quotes_log2_n():
    msgs = dv.saturation_warnings({1: 3.0, 2: 9.5, 3: 9.9}, 1024)
    assert len(msgs) == 2
    assert "log2(n) = 10.00" in msgs[0] and "2-tuples" in msgs[0]
    assert dv.saturation_warnings({1: 2.0, 2: 4.0}, 1 << 14) == []
    assert "observation" in dv.saturation_warnings({1: 0.0}, 1)[0]


def test_mask_sizes():
    assert dv.mask_sizes(3).tolist() == [0, 1, 1, 2, 1, 2, 2, 3]
    assert members(0b10110) == [1, 2, 4]
