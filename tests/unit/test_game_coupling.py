"""Hand-computed values and invariants for headgame.game.coupling and losses (spec game-lora §3, §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headgame.game import (
    GradientGram,
    abt_loss,
    abt_pair_weights,
    cosine_from_gram,
    gamma,
    interaction_matrix,
    log_det_barrier,
    poa_proxy,
    weight_coupling,
)

S2 = math.sqrt(2.0)
S3 = math.sqrt(3.0)


def _random_g(h: int = 5, d: int = 12, dh: int = 4, n: int = 30, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    omega = weight_coupling(torch.randn(h, d, dh, generator=gen))
    gg = GradientGram(h, dh)
    gg.update(torch.randn(n, h, dh, generator=gen))
    return interaction_matrix(omega, gg.rho())


# --- invariants ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_g_symmetric_psd_unit_diagonal(seed: int) -> None:
    g = _random_g(seed=seed)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, g.T)
    torch.testing.assert_close(torch.diagonal(g), torch.ones(5))
    assert torch.linalg.eigvalsh(g.double()).min() >= -1e-6
    assert g.abs().max() <= 1.0


def test_hand_computed_three_heads() -> None:
    # W_O slices (d=2, dh=1): e1, (e1+e2), e2 -> ω12 = ω23 = 1/√2, ω13 = 0.
    w_o = torch.tensor([[[1.0], [0.0]], [[1.0], [1.0]], [[0.0], [1.0]]])  # [3, 2, 1]
    omega = weight_coupling(w_o)
    omega_hand = torch.tensor([[1, 1 / S2, 0], [1 / S2, 1, 1 / S2], [0, 1 / S2, 1]])
    torch.testing.assert_close(omega, omega_hand)

    # Per-head gradient vectors over N=2 tokens (dh=1): (1,0), (1,√3), (2,0)
    # -> ρ12 = 1/2, ρ13 = 1 (parallel), ρ23 = 1/2. Streamed one token at a time.
    g = torch.tensor([[[1.0], [1.0], [2.0]], [[0.0], [S3], [0.0]]], dtype=torch.float64)  # [2, 3, 1]
    gg = GradientGram(3, 1)
    gg.update(g[:1])
    gg.update(g[1:])
    assert gg.n_tokens == 2
    rho_hand = torch.tensor([[1, 0.5, 1], [0.5, 1, 0.5], [1, 0.5, 1]], dtype=torch.float64)
    torch.testing.assert_close(gg.rho(), rho_hand)

    big = interaction_matrix(omega, gg.rho())
    a = S2 / 4  # 1/√2 · 1/2
    g_hand = torch.tensor([[1, a, 0], [a, 1, a], [0, a, 1]])
    torch.testing.assert_close(big, g_hand)

    # Four off-diagonal entries of size √2/4: Γ² = 4 · 1/8 = 1/2.
    out = gamma(big)
    assert out["gamma"] == pytest.approx(1 / S2, abs=1e-6)
    assert out["gamma_norm"] == pytest.approx(1 / math.sqrt(12), abs=1e-6)
    assert out["gamma_abs"] == pytest.approx(4 * a / 6, abs=1e-6)
    assert gamma(big.numpy()) == pytest.approx(out)


def test_cosine_from_gram_zero_norm_head() -> None:
    v = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    cos = cosine_from_gram(v @ v.T)
    torch.testing.assert_close(torch.diagonal(cos), torch.ones(3))
    assert cos[1, 0] == 0 and cos[1, 2] == 0 and cos[0, 1] == 0
    assert cos[0, 2] == pytest.approx(1 / S2)


def test_weight_coupling_differentiable_float64() -> None:
    w = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert weight_coupling(w).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: weight_coupling(x).sum(), (w,))
    assert weight_coupling(w.detach().to(torch.bfloat16)).dtype == torch.float32


def test_gradient_gram_streaming_equals_one_shot() -> None:
    h, dh = 4, 3
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, h, dh, generator=gen) for n in (5, 1, 7)]
    gg = GradientGram(h, dh)
    for b in batches:
        gg.update(b)
    allg = torch.cat(batches).double()  # [13, H, dh]
    vecs = allg.permute(1, 0, 2).reshape(h, -1)  # [H, N*dh]: token-concatenated head vectors
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    torch.testing.assert_close(gg.rho(), vecs @ vecs.T)
    assert gg.n_tokens == 13 and gg.gram().dtype == torch.float64

    # merge == one accumulator over all batches; state_dict round-trips.
    a, b = GradientGram(h, dh), GradientGram(h, dh)
    a.update(batches[0])
    b.update(torch.cat(batches[1:]).reshape(2, 4, h, dh))  # leading dims flattened
    a.merge(b)
    # Batch Grams are float32 matmuls, so a different batching rounds differently.
    torch.testing.assert_close(a.gram(), gg.gram(), rtol=1e-5, atol=1e-5)
    c = GradientGram(h, dh)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.rho(), gg.rho())
    assert c.n_tokens == 13


def test_gradient_gram_bf16_and_errors() -> None:
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(20, 3, 4, generator=gen)
    exact, low = GradientGram(3, 4), GradientGram(3, 4)
    exact.update(g)
    low.update(g.to(torch.bfloat16))
    torch.testing.assert_close(low.rho(), exact.rho(), atol=2e-2, rtol=0)
    with pytest.raises(ValueError):
        GradientGram(3, 4).rho()
    with pytest.raises(ValueError):
        exact.update(torch.randn(5, 4, 4))


def test_interaction_matrix_gradient_through_omega_only() -> None:
    w = torch.randn(3, 4, 2, requires_grad=True)
    rho = torch.eye(3) * 0.5 + 0.5
    rho.requires_grad_(True)
    interaction_matrix(weight_coupling(w), rho).sum().backward()
    assert w.grad is not None and rho.grad is None


# --- Γ and the PoA proxy ------------------------------------------------------------------


def test_gamma_identity_and_single_head() -> None:
    assert gamma(torch.eye(4)) == {"gamma": 0.0, "gamma_norm": 0.0, "gamma_abs": 0.0}
    assert gamma(np.ones((1, 1))) == {"gamma": 0.0, "gamma_norm": 0.0, "gamma_abs": 0.0}


def test_poa_proxy() -> None:
    out = poa_proxy(0.0, 14)
    assert out["proxy"] == 1.0 and out["gamma_sq"] == 0.0
    assert out["c"] == pytest.approx(1 / (14 * 13))
    assert isinstance(out["assumption"], str) and "c =" in out["assumption"]
    proxies = [poa_proxy(x, 14)["proxy"] for x in (0.0, 1.0, 5.0, 10.0, 13.0)]
    assert all(p1 < p2 for p1, p2 in zip(proxies, proxies[1:]))
    # The default c makes c·Γ² = Γ_norm²: Γ = sqrt(H(H-1)) (all |G_ij| = 1) is vacuous.
    assert poa_proxy(math.sqrt(14 * 13), 14)["proxy"] == float("inf")
    assert poa_proxy(1.0, 4, c=0.5)["proxy"] == pytest.approx(2.0)
    assert poa_proxy(0.5, 1)["proxy"] == 1.0


# --- losses -------------------------------------------------------------------------------


def test_log_det_barrier_identity_and_minimum() -> None:
    h, eps = 6, 0.01
    assert float(log_det_barrier(torch.eye(h))) == pytest.approx(-h * math.log(1 + eps), rel=1e-6)
    assert float(log_det_barrier(_random_g(h=6))) > -h * math.log(1 + eps)
    # A rank-deficient G (two identical heads) stays finite thanks to the ε ridge.
    assert math.isfinite(float(log_det_barrier(torch.ones(3, 3))))


def test_log_det_barrier_gradcheck() -> None:
    w = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    rho = torch.eye(4, dtype=torch.float64) * 0.6 + 0.4
    fn = lambda x: log_det_barrier(interaction_matrix(weight_coupling(x), rho))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (w,))


def test_abt_pair_weights_sanity_values() -> None:
    g = torch.tensor([[0.0, 0.3], [-0.3, 0.0]])
    w = abt_pair_weights(g)
    assert round(float(w[0, 0]), 3) == 0.978
    assert round(float(w[0, 1]), 3) == 0.930
    assert round(float(w[1, 0]), 3) == 1.270
    torch.testing.assert_close(abt_pair_weights(g, mode="uniform"), torch.ones(2, 2))
    inv = abt_pair_weights(g, mode="inverse")
    assert round(float(inv[0, 1]), 3) == 1.270 and round(float(inv[1, 0]), 3) == 0.930
    gr = g.clone().requires_grad_(True)
    assert not abt_pair_weights(gr).requires_grad
    with pytest.raises(ValueError):
        abt_pair_weights(g, mode="nope")


def test_abt_loss_hand_values() -> None:
    # H=2, dh=2: C_01 = 0 -> ‖C − I‖² = 2, ‖C‖² = 0; one pair, weight 0.5.
    c = torch.zeros(2, 2, 2, 2)
    c[0, 0] = c[1, 1] = torch.eye(2)
    assert float(abt_loss(c)) == pytest.approx(2.0)
    assert float(abt_loss(c, torch.full((2, 2), 0.5))) == pytest.approx(1.0)
    assert float(abt_loss(c, subtract_identity=False)) == 0.0
    assert float(abt_loss(torch.zeros(1, 1, 3, 3))) == 0.0
