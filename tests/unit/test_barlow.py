"""Differentiable head cross-correlation, EMA normaliser and disagreement term."""

from __future__ import annotations

import math

import pytest
import torch

from headgame.game.barlow import EMANormalizer, head_cross_correlation, output_disagreement
from headgame.game.redundancy import OutputMoments, cross_correlation


def test_cross_correlation_matches_streaming_statistic():
    torch.manual_seed(0)
    o = torch.randn(50, 3, 4, dtype=torch.float64) * 2 + 1
    c = head_cross_correlation(o)
    mom = OutputMoments(3, 4)
    mom.update(o)
    torch.testing.assert_close(c.double(), cross_correlation(mom), atol=1e-5, rtol=1e-5)


def test_cross_correlation_hand_example():
    # two heads with dh=1: head 1 = head 0 exactly, so C_01 = C_00 = (N-1)/N·σ²/(σ+eps)² ≈ (N-1)/N
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    o = torch.stack([x, x], dim=1)  # [4, 2, 1]
    c = head_cross_correlation(o, eps=0.0)
    assert c.shape == (2, 2, 1, 1)
    assert float(c[0, 1, 0, 0]) == pytest.approx(3 / 4)


def test_split_reduction_equals_one_batch():
    torch.manual_seed(1)
    o = torch.randn(40, 3, 5, requires_grad=True)
    full = head_cross_correlation(o)
    parts = [o[:15], o[15:]]

    # the reduction algebra of two processes, written out by hand over two shards
    def two_proc():
        def red(fn):
            return fn(parts[0]) + fn(parts[1])
        n = torch.tensor(40.0)
        mu = red(lambda p: p.sum(0)) / n
        var = red(lambda p: ((p - mu) ** 2).sum(0)) / (n - 1)
        z = [(p - mu) / (var.sqrt() + 1e-8) for p in parts]
        flat = [zz.reshape(zz.shape[0], -1) for zz in z]
        cc = (flat[0].T @ flat[0] + flat[1].T @ flat[1]) / n
        return cc.reshape(3, 5, 3, 5).permute(0, 2, 1, 3)

    torch.testing.assert_close(two_proc(), full, atol=1e-6, rtol=1e-5)


def test_ema_normalizer_s_form():
    ema = EMANormalizer()
    assert ema.m == 20.0
    out = ema(torch.tensor(40.0))
    assert ema.m == pytest.approx(22.0) and float(out) == pytest.approx(40 * 20 / 22)
    ema2 = EMANormalizer(mode="nd-lora")
    ema2(torch.tensor(10.0))
    assert ema2.m == 10.0
    ema2(torch.tensor(20.0), warmup=False)
    assert ema2.m == 10.0  # frozen after warm-up
    state = ema.state_dict()
    fresh = EMANormalizer()
    fresh.load_state_dict(state)
    assert fresh.m == ema.m


def test_output_disagreement_values():
    # identical heads: every cosine is 1 -> term 1; orthogonal heads: only i=j -> 1/H
    v = torch.tensor([1.0, 0.0])
    same = torch.stack([v, v, v], dim=0).unsqueeze(0)  # [1, 3, 2]
    assert float(output_disagreement(same)) == pytest.approx(1.0)
    ortho = torch.eye(2).unsqueeze(0)  # [1, 2, 2]
    assert float(output_disagreement(ortho)) == pytest.approx(0.5)
    anti = torch.stack([v, -v]).unsqueeze(0)
    assert float(output_disagreement(anti)) == pytest.approx(0.0)
    assert math.isfinite(float(output_disagreement(torch.randn(7, 4, 3))))
