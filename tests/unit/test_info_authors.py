"""The GT-FEP authors' head score against a hand computation on a small symbol table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from headgame.info.authors import authors_scores, example_symbols, plugin_entropy


def _codes():
    # 4 examples × 2 positions, 3 heads, rows interleaved across examples (order within an example kept)
    rows = {  # example -> [(position 0 symbols), (position 1 symbols)]
        0: [(0, 5, 0), (1, 5, 0)],
        1: [(0, 5, 1), (1, 5, 0)],
        2: [(1, 5, 2), (1, 5, 0)],
        3: [(1, 5, 3), (1, 5, 0)],
    }
    x, seq = [], []
    for pos in range(2):
        for e in (2, 0, 3, 1):
            x.append(rows[e][pos])
            seq.append(e)
    return example_symbols(np.array(x), np.array(seq))


def test_example_symbols_are_whole_sequence_tuples():
    codes = _codes()
    # head 0: (0,1) (0,1) (1,1) (1,1); head 1: (5,5) always; head 2: (0,0) (1,0) (2,0) (3,0) all distinct
    assert codes[:, 0].tolist() == [0, 0, 1, 1]
    assert codes[:, 1].tolist() == [0, 0, 0, 0]
    assert len(set(codes[:, 2].tolist())) == 4


def test_authors_score_by_hand():
    out = authors_scores(_codes())
    ln2 = math.log(2)
    # H: ln 2, 0, ln 4;  MI(0,1) = 0 (head 1 constant), MI(0,2) = ln2 + ln4 − ln4 = ln 2, MI(1,2) = 0
    np.testing.assert_allclose(out["singleton"], [ln2, 0.0, 2 * ln2], atol=1e-12)
    np.testing.assert_allclose(out["pair"], [[0, 0, ln2], [0, 0, 0], [ln2, 0, 0]], atol=1e-12)
    # s_i = H(i) + ½ Σ_{j≠i} MI(i, j): the pairs are added
    np.testing.assert_allclose(out["score"], [1.5 * ln2, 0.0, 2.5 * ln2], atol=1e-12)


def test_plugin_entropy_in_nats_and_pairs_nonnegative():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(200, 5))
    assert plugin_entropy(np.array([0, 1, 2, 3])) == pytest.approx(math.log(4))
    out = authors_scores(codes)
    assert (out["pair"] >= -1e-12).all() and np.allclose(out["pair"], out["pair"].T)
    # by brute force: the joint histogram of two heads
    i, j = 1, 3
    counts = {}
    for a, b in zip(codes[:, i], codes[:, j]):
        counts[(a, b)] = counts.get((a, b), 0) + 1
    h_ij = -sum(c / 200 * math.log(c / 200) for c in counts.values())
    assert out["pair"][i, j] == pytest.approx(out["singleton"][i] + out["singleton"][j] - h_ij, abs=1e-12)
