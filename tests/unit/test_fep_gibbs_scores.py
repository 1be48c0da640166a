"""Gibbs distributions over subsets and coalition structures; head scores; ε-Nash."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from headgame.info import dividends as dv
from headgame.info.analysis import InfoOptions, analyse_layer, dividend_rows
from headgame.info.entropy import low_order_entropies, subset_entropy_table
from headgame.info.gibbs import inclusion_probabilities, mcmc_partitions, partition_energy, subset_gibbs
from headgame.info.scores import epsilon_nash, fep_exact, fep_order3, shapley_order3, spearman


def set_partitions(items: list[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1 :]
        yield [[first]] + part


def test_subset_gibbs_and_inclusion_probabilities():
    f = torch.tensor([0.0, 1.0, 2.0, 2.5], dtype=torch.float64)  # 2 heads
    p = subset_gibbs(f, beta=1.0)
    w = np.exp(-f.numpy())
    np.testing.assert_allclose(p.numpy(), w / w.sum())
    pi = inclusion_probabilities(p)
    np.testing.assert_allclose(pi.numpy(), [p[1] + p[3], p[2] + p[3]])


def test_mcmc_matches_exact_gibbs_over_partitions():
    # 4 heads: 15 partitions, so the exact distribution can be enumerated
    g = torch.Generator().manual_seed(2)
    f = torch.rand(16, generator=g, dtype=torch.float64) * 3
    f[0] = 0
    parts = list(set_partitions(list(range(4))))
    assert len(parts) == 15
    energies = []
    for part in parts:
        labels = np.zeros(4, int)
        for b, block in enumerate(part):
            labels[block] = b
        energies.append(partition_energy(labels, f.numpy()))
    w = np.exp(-np.array(energies))
    w /= w.sum()
    exact = np.zeros((4, 4))
    for part, pw in zip(parts, w):
        for block in part:
            for i, j in itertools.product(block, block):
                exact[i, j] += pw
    chain = mcmc_partitions(f, beta=1.0, steps=60_000, burn_in=2_000, seed=0)
    np.testing.assert_allclose(chain.co_membership, exact, atol=0.03)
    assert chain.map_energy == pytest.approx(min(energies))
    assert 0 < chain.acceptance <= 1


def test_fep_score_is_exact_for_three_heads_and_shapley_matches_brute_force():
    g = torch.Generator().manual_seed(4)
    n = 500
    a = torch.randint(0, 4, (n,), generator=g)
    x = torch.stack([a, (a + torch.randint(0, 2, (n,), generator=g)) % 4, torch.randint(0, 3, (n,), generator=g)], 1)
    lo = low_order_entropies(x)
    d2, d3 = dv.pair_dividends(lo.h1, lo.h2), dv.triple_dividends(lo.h1, lo.h2, lo.h3)
    table = subset_entropy_table(x)
    m3 = fep_order3(lo.h1, d2, d3)
    exact = fep_exact(float(table[7]), torch.stack([table[7 ^ (1 << i)] for i in range(3)]))
    torch.testing.assert_close(m3, exact)  # with 3 heads the order-3 truncation is the full sum
    # Shapley value of the game v(S) = H(X_S), by permutations
    phi = np.zeros(3)
    for perm in itertools.permutations(range(3)):
        mask = 0
        for h in perm:
            phi[h] += float(table[mask | (1 << h)] - table[mask])
            mask |= 1 << h
    np.testing.assert_allclose(shapley_order3(lo.h1, d2, d3).numpy(), phi / 6, atol=1e-12)
    assert torch.allclose(m3, (lo.h1 - d2.sum(1) - torch.tensor([float(d3[0, 1, 2])] * 3)))


def test_analyse_layer_and_rows():
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 6, (400, 4), generator=g)
    x[:, 1] = x[:, 0]
    seq = torch.arange(400) // 50
    info = analyse_layer(3, x, seq, 64, InfoOptions(bootstrap=20, mcmc_steps=500, mcmc_burn_in=100))
    assert info.scores["fep-exact"][0] == pytest.approx(0.0, abs=1e-12)  # head 0 is a copy of head 1
    assert set(info.scores) >= {"fep", "fep-exact", "shapley", "gibbs", "entropy"}
    rows = dividend_rows(info)
    assert len(rows) == 15 and rows[0]["order"] == 1 and rows[-1]["order"] == 4
    pair01 = next(r for r in rows if r["heads"] == "0-1")
    assert pair01["value"] == pytest.approx(float(info.ent.h1[0])) and 0.0 <= pair01["ci_low"] <= pair01["ci_high"]
    s = info.summary_dict()
    assert s["layer"] == 3 and "frac_negative" in s["triples"] and "triples_ci" in s and "coalitions" in s
    lo, hi = s["triples_ci"]["frac_negative"]
    assert 0.0 <= lo <= hi <= 1.0
    # the basic interval is the percentile one reflected about the estimate
    pct = analyse_layer(3, x, seq, 64, InfoOptions(bootstrap=20, mcmc_steps=0, ci_method="percentile"))
    p_lo, p_hi = pct.summary_dict()["triples_ci"]["mean"]
    b_lo, b_hi = s["triples_ci"]["mean"]
    assert b_lo == pytest.approx(2 * s["triples"]["mean"] - p_hi, abs=1e-12)
    assert b_hi == pytest.approx(2 * s["triples"]["mean"] - p_lo, abs=1e-12)
    wide = analyse_layer(0, x, seq, 64, InfoOptions(bootstrap=0, mcmc_steps=0, full_max_heads=3))
    assert wide.table is None and "gibbs" not in wide.scores
    np.testing.assert_allclose(wide.scores["fep-exact"], info.scores["fep-exact"], atol=1e-12)
    assert len(dividend_rows(wide)) == 4 + 6 + 4


def test_epsilon_nash_and_spearman():
    m = np.array([[0.1, 2.0, 3.0], [0.5, 0.05, 4.0]])
    h1 = np.full((2, 3), 2.0)
    e = epsilon_nash(m, {0: [0], 1: [1]}, h1)
    assert e.epsilon_bits == pytest.approx(0.1) and e.epsilon_relative == pytest.approx(0.05) and e.n_pruned == 2
    rho, p = spearman(m, m * 2 + 1)
    assert rho == pytest.approx(1.0)
    assert spearman(m, np.ones_like(m)) == (None, None)
    assert math.isnan(epsilon_nash(m, {}, np.zeros((2, 3))).epsilon_relative)
