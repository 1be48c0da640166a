"""Streaming z-scored cross-correlation (spec game-lora §4.2) against the direct formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headgame.game import OutputMoments, abt_pair_weights, cross_correlation, redundancy_stats

H, DH, N = 3, 4, 40


def _data(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(H * DH, H * DH, generator=gen, dtype=torch.float64)
    x = torch.randn(N, H * DH, generator=gen, dtype=torch.float64) @ mix  # correlated features
    return (x + 5.0).reshape(N, H, DH)  # [N, H*dh] -> [N, H, dh]; offset mean tests centring


def _direct(o: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """spec §4.2 verbatim: z-score with unbiased std over all N tokens, C_ij = Õ_iᵀÕ_j / N."""
    z = (o - o.mean(dim=0)) / (o.std(dim=0, unbiased=True) + eps)  # [N, H, dh]
    return torch.einsum("nik,njl->ijkl", z, z) / o.shape[0]  # [H, H, dh, dh]


def test_cross_correlation_one_batch_matches_direct() -> None:
    o = _data()
    m = OutputMoments(H, DH)
    m.update(o)
    torch.testing.assert_close(cross_correlation(m), _direct(o), atol=1e-10, rtol=0)


def test_cross_correlation_three_batches_matches_direct() -> None:
    o = _data(1)
    m = OutputMoments(H, DH)
    for part in (o[:7], o[7:8], o[8:]):
        m.update(part)
    assert m.n == N
    torch.testing.assert_close(cross_correlation(m), _direct(o), atol=1e-10, rtol=0)
    # Raw moments are recoverable exactly.
    x = o.reshape(N, H * DH)  # [N, H, dh] -> [N, H*dh]
    torch.testing.assert_close(m.sum(), x.sum(0), atol=1e-9, rtol=0)
    torch.testing.assert_close(m.sum_outer(), x.T @ x, atol=1e-8, rtol=1e-12)


def test_merge_and_state_dict() -> None:
    o = _data(2)
    a, b, whole = OutputMoments(H, DH), OutputMoments(H, DH), OutputMoments(H, DH)
    a.update(o[:13])
    b.update(o[13:])
    whole.update(o)
    a.merge(b)
    torch.testing.assert_close(cross_correlation(a), cross_correlation(whole), atol=1e-10, rtol=0)
    c = OutputMoments(H, DH)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(cross_correlation(c), cross_correlation(whole), atol=1e-10, rtol=0)


def test_float32_input_close() -> None:
    o = _data(3)
    m = OutputMoments(H, DH)
    for part in o.float().split(10):
        m.update(part)
    torch.testing.assert_close(cross_correlation(m), _direct(o), atol=1e-4, rtol=0)


def test_self_correlation_diagonal_exact() -> None:
    # With the unbiased std, C_ii[k,k] = (M2/N) / (sqrt(M2/(N-1)) + eps)^2
    #                                 = ((N-1)/N) * σ² / (σ + eps)²  ≈ (N-1)/N.
    o, eps = _data(4), 1e-8
    m = OutputMoments(H, DH)
    m.update(o)
    c = cross_correlation(m, eps=eps)
    diag = torch.stack([torch.diagonal(c[i, i]) for i in range(H)])  # [H, dh]
    sigma = o.std(dim=0, unbiased=True)  # [H, dh]
    exact = (N - 1) / N * sigma**2 / (sigma + eps) ** 2
    torch.testing.assert_close(diag, exact, atol=1e-12, rtol=0)
    torch.testing.assert_close(diag, torch.full((H, DH), (N - 1) / N, dtype=torch.float64))
    # With the biased std the diagonal is 1 (up to eps).
    cb = cross_correlation(m, eps=eps, unbiased_std=False)
    torch.testing.assert_close(torch.diagonal(cb[1, 1]), torch.ones(DH, dtype=torch.float64))


def test_redundancy_stats_hand_values() -> None:
    # H=2, dh=2: C_01 = [[0.5, 0.1], [-0.2, 0.3]], C_ii = I.
    blk = torch.tensor([[0.5, 0.1], [-0.2, 0.3]], dtype=torch.float64)
    c = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    c[0, 0] = c[1, 1] = torch.eye(2, dtype=torch.float64)
    c[0, 1], c[1, 0] = blk, blk.T
    g = torch.tensor([[1.0, 0.3], [0.3, 1.0]])
    s = redundancy_stats(c, g)
    bt_id = 0.25 + 0.01 + 0.04 + 0.49  # ‖C − I‖² = 0.79
    bt_zero = 0.25 + 0.01 + 0.04 + 0.09  # ‖C‖² = 0.39
    np.testing.assert_allclose(s["bt_identity"], [[0, bt_id], [bt_id, 0]])
    np.testing.assert_allclose(s["bt_zero"], [[0, bt_zero], [bt_zero, 0]])
    np.testing.assert_allclose(s["aligned_corr"], [[1, 0.4], [0.4, 1]])
    np.testing.assert_allclose(s["mean_abs_corr"], [[0.5, 0.275], [0.275, 0.5]])
    assert s["l_abt_uniform"] == pytest.approx(bt_id)
    assert s["l_abt_zero"] == pytest.approx(bt_zero)
    w01 = float(abt_pair_weights(g)[0, 1])
    assert s["l_abt_adaptive"] == pytest.approx(w01 * bt_id, rel=1e-6)
    assert s["redundancy_index"] == pytest.approx(0.275)
    assert redundancy_stats(c)["l_abt_adaptive"] is None


def test_independent_heads_low_redundancy() -> None:
    gen = torch.Generator().manual_seed(5)
    o = torch.randn(4000, H, DH, generator=gen, dtype=torch.float64)
    dup = o.clone()
    dup[:, 1] = dup[:, 0]  # head 1 duplicates head 0
    s_ind, s_dup = (redundancy_stats(cross_correlation(_m(x))) for x in (o, dup))
    assert s_ind["aligned_corr"][0, 1] == pytest.approx(0.0, abs=0.05)
    assert s_dup["aligned_corr"][0, 1] == pytest.approx(1.0, abs=1e-3)
    assert s_dup["redundancy_index"] > s_ind["redundancy_index"]
    # Identity target: duplicated heads nearly satisfy it (up to sampling noise in the
    # cross-feature entries), independent heads pay ≈ dh.
    assert s_dup["bt_identity"][0, 1] < 0.05
    assert s_ind["bt_identity"][0, 1] == pytest.approx(DH, rel=0.05)


def _m(o: torch.Tensor) -> OutputMoments:
    m = OutputMoments(H, DH)
    m.update(o)
    return m


def test_errors() -> None:
    m = OutputMoments(H, DH)
    with pytest.raises(ValueError):
        m.update(torch.randn(5, H, DH + 1))
    m.update(torch.randn(1, H, DH))
    with pytest.raises(ValueError):
        cross_correlation(m)  # one token: std undefined
