"""Coalitions and selective coordination (spec game-lora §9.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headgame.game import find_coalitions, selective_coordination, selective_coordination_change

# Two interleaved coalitions {0, 2, 4} and {1, 3, 5}.
BLOCKS = ([0, 2, 4], [1, 3, 5])


def _block_g(within: float = 0.8, between: float = 0.05, noise: float = 0.02, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = np.full((6, 6), between)
    for blk in BLOCKS:
        g[np.ix_(blk, blk)] = within
    e = rng.uniform(-noise, noise, size=(6, 6))
    g = g + (e + e.T) / 2
    np.fill_diagonal(g, 1.0)
    return g


def test_block_structure_recovered_with_k2() -> None:
    g = _block_g()
    out = find_coalitions(g)
    assert out["k"] == 2
    assert out["labels"] == [0, 1, 0, 1, 0, 1]
    assert out["sizes"] == [3, 3]
    assert set(out["silhouette"]) <= {2, 3, 4} and 2 in out["silhouette"]
    assert out["silhouette"][2] == max(out["silhouette"].values())
    assert "bistochastic" in out["method"]


def test_coalitions_deterministic_and_sign_invariant() -> None:
    g = _block_g(seed=1)
    a, b = find_coalitions(g), find_coalitions(g)
    assert a == b
    # Only |G| matters; torch input accepted.
    assert find_coalitions(torch.tensor(-g))["labels"] == a["labels"]


def test_too_few_heads_single_coalition() -> None:
    out = find_coalitions(np.eye(2))
    assert out["k"] == 1 and out["labels"] == [0, 0] and out["sizes"] == [2]
    assert "note" in out and out["silhouette"] == {}


def test_invalid_k_skipped() -> None:
    # H = 4: k = 4 is not allowed (k <= H-1).
    g = np.eye(4) + 0.1
    out = find_coalitions(g, ks=(2, 4))
    assert 4 in out["skipped"] and 4 not in out["silhouette"]


def test_selective_coordination_clear_blocks() -> None:
    out = selective_coordination(_block_g(), [0, 1, 0, 1, 0, 1])
    assert out["n_within"] == 6 and out["n_between"] == 9
    assert out["p"] < 1e-3  # perfect separation: exact p = 1 / C(15, 6) ≈ 2e-4
    assert out["U"] == 54.0 and out["effect_size_r"] == pytest.approx(1.0)
    assert out["within_mean"] > out["between_mean"]


def test_selective_coordination_hand_values() -> None:
    g = np.array([[1.0, 0.9, 0.1, 0.2], [0.9, 1.0, 0.3, 0.4], [0.1, 0.3, 1.0, 0.5], [0.2, 0.4, 0.5, 1.0]])
    out = selective_coordination(g, [0, 0, 1, 1])
    # within {0.9, 0.5}, between {0.1, 0.2, 0.3, 0.4}: U = 4 + 4 = 8 = n1·n2 -> r = 1.
    assert out["U"] == 8.0 and out["effect_size_r"] == 1.0
    assert out["within_mean"] == pytest.approx(0.7)
    assert out["between_mean"] == pytest.approx(0.25)


def test_selective_coordination_empty_group() -> None:
    out = selective_coordination(np.eye(3), [0, 0, 0])
    assert out["p"] is None and out["U"] is None and "note" in out


def test_selective_coordination_change() -> None:
    before = _block_g(within=0.8, between=0.5, noise=0.0)
    after = _block_g(within=0.75, between=0.1, noise=0.02, seed=3)  # between drops much more
    out = selective_coordination_change(before, after, [0, 1, 0, 1, 0, 1])
    assert out["p"] < 1e-3 and out["effect_size_r"] == pytest.approx(1.0)
    assert out["delta_between_mean"] < out["delta_within_mean"] < 0
    assert out["before_between_mean"] == pytest.approx(0.5)
    # The reverse change is not selective.
    rev = selective_coordination_change(after, before, [0, 1, 0, 1, 0, 1])
    assert rev["p"] > 0.5 and rev["effect_size_r"] < 0
