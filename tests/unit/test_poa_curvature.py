"""PoA bound, Lanczos / power iteration / SLQ quantiles, and the head-output Hessian of the LM loss.

Reference values are computed independently: numpy.linalg.eigh of explicit matrices, and the
exact Hessian of the mean loss in a layer's o_proj input built by torch.autograd.functional.hessian
through a forward pre-hook that substitutes that input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headgame.errors import HeadgameError
from headgame.game.poa import lanczos, poa_bound, power_iteration, spectral_quantile
from headgame.measure.curvature import active_positions, hessian_blocks, layer_curvature
from headgame.models.layout import HeadLayout
from headgame.models.objective import Objective
from headgame.models.tiny import byte_tokenizer, tiny_model

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- poa_bound
def test_poa_bound_hand_values():
    r = poa_bound(0.5, 2.0, 1.0, beta_r=0.1, beta_c=0.2)  # κ = 2, κΓ² = 0.5, 1/(1-0.5) = 2
    assert r["finite"] and r["reason"] is None
    assert r["kappa"] == pytest.approx(2.0) and r["kappa_gamma2"] == pytest.approx(0.5)
    assert r["denominator_factor"] == pytest.approx(2.0) and r["bound"] == pytest.approx(1.3 * 2.0)
    assert poa_bound(0.0, 3.0, 1.0)["bound"] == pytest.approx(1.0)  # no coupling: PoA ≤ 1 + β


def test_poa_bound_not_finite():
    r = poa_bound(0.5, 2.0, -0.1)
    assert not r["finite"] and math.isinf(r["bound"]) and "not strongly convex" in r["reason"]
    r = poa_bound(1.0, 2.0, 1.0)  # κΓ² = 2
    assert not r["finite"] and math.isinf(r["bound"]) and r["kappa_gamma2"] == pytest.approx(2.0)
    assert ">= 1" in r["reason"]
    assert not poa_bound(0.5, 4.0, 1.0)["finite"]  # κΓ² = 1 exactly: the boundary is excluded


@pytest.mark.parametrize("kwargs, word", [
    ({"gamma": -0.1, "L": 1.0, "alpha": 0.5}, "gamma"),
    ({"gamma": float("nan"), "L": 1.0, "alpha": 0.5}, "gamma"),
    ({"gamma": 0.1, "L": -1.0, "alpha": 0.5}, "L must"),
    ({"gamma": 0.1, "L": float("inf"), "alpha": 0.5}, "L must be finite"),
    ({"gamma": 0.1, "L": 1.0, "alpha": float("nan")}, "alpha"),
    ({"gamma": 0.1, "L": 1.0, "alpha": 2.0}, "exceeds L"),
    ({"gamma": 0.1, "L": 1.0, "alpha": 0.5, "beta_r": -1.0}, "beta_r"),
    ({"gamma": 0.1, "L": 1.0, "alpha": 0.5, "beta_c": -1.0}, "beta_c"),
    ({"gamma": "x", "L": 1.0, "alpha": 0.5}, "real number"),
])
def test_poa_bound_bad_input(kwargs, word):
    with pytest.raises(HeadgameError, match=word):
        poa_bound(**kwargs)


# ----------------------------------------------------------------------------- spectral helpers
def _sym(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((n, n))
    return (a + a.T) / 2


def _mv(a: np.ndarray):
    t = torch.from_numpy(a)
    return lambda v: t @ v


def test_lanczos_full_steps_give_the_spectrum_and_weights():
    a = _sym(30, 0)
    lam, u = np.linalg.eigh(a)
    v0 = torch.from_numpy(np.random.default_rng(1).standard_normal(30))
    r = lanczos(_mv(a), v0, 30)
    np.testing.assert_allclose(r.values, lam, atol=1e-9)
    # Gauss weights = squared projections of the unit start vector on the eigenvectors
    proj = (u.T @ (v0.numpy() / np.linalg.norm(v0.numpy()))) ** 2
    np.testing.assert_allclose(r.weights, proj, atol=1e-9)
    assert r.weights.sum() == pytest.approx(1.0)
    q = r.basis.numpy()
    np.testing.assert_allclose(q @ q.T, np.eye(30), atol=1e-10)  # full re-orthogonalisation
    y = r.ritz_vector(-1).numpy()
    np.testing.assert_allclose(a @ y, lam[-1] * y, atol=1e-8)
    assert r.residuals.max() < 1e-8


def test_lanczos_partial_steps_interlace_and_find_the_extremes():
    n, k = 80, 12
    a = _sym(n, 2)
    lam = np.linalg.eigvalsh(a)
    r = lanczos(_mv(a), torch.from_numpy(np.random.default_rng(3).standard_normal(n)), k)
    assert r.steps == k
    theta = r.values
    # Cauchy interlacing of Qᵀ A Q: θ_j ≥ λ_j and θ_{k-j} ≤ λ_{n-j}
    assert np.all(theta >= lam[:k] - 1e-10) and np.all(theta <= lam[n - k:] + 1e-10)
    # the residual bound holds: some eigenvalue lies within residual_j of θ_j
    for t, res in zip(theta, r.residuals):
        assert np.min(np.abs(lam - t)) <= res + 1e-9
    # an isolated top eigenvalue converges within a few steps
    b = np.diag(np.r_[np.linspace(0, 1, n - 1), 5.0])
    rb = lanczos(_mv(b), torch.ones(n, dtype=torch.float64), 8)
    assert rb.values[-1] == pytest.approx(5.0, abs=1e-8)


def test_lanczos_stops_at_an_invariant_subspace():
    a = np.diag([1.0, 2.0, 3.0, 4.0])
    r = lanczos(_mv(a), torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64), 4)
    assert r.steps == 2 and r.beta_last == 0.0
    np.testing.assert_allclose(r.values, [1.0, 2.0], atol=1e-12)


def test_power_iteration():
    a = np.diag([5.0, 1.0, 0.5, -0.2, 0.1])
    v0 = torch.ones(5, dtype=torch.float64)
    r = power_iteration(_mv(a), v0, iters=200, tol=1e-8)
    assert r["converged"] and r["value"] == pytest.approx(5.0, rel=1e-12) and r["iters"] < 200
    assert abs(float(r["vector"][0])) == pytest.approx(1.0, abs=1e-7)
    r1 = power_iteration(_mv(a), v0, iters=1, tol=1e-8)
    assert not r1["converged"] and r1["iters"] == 1
    assert r1["value"] == pytest.approx(float(v0 @ torch.from_numpy(a) @ v0) / 5)  # Rayleigh quotient of v0


def test_spectral_quantile_hand_values():
    nodes, weights = [3.0, 1.0, 2.0], [0.4, 0.1, 0.5]
    assert spectral_quantile(nodes, weights, 0.05) == 1.0
    assert spectral_quantile(nodes, weights, 0.1) == 1.0
    assert spectral_quantile(nodes, weights, 0.11) == 2.0
    assert spectral_quantile(nodes, weights, 0.6) == 2.0
    assert spectral_quantile(nodes, weights, 0.61) == 3.0
    assert spectral_quantile([1.0, 2.0], [2.0, 2.0], 0.5) == 1.0  # weights are normalised


def test_slq_quantile_tracks_the_eigenvalue_quantile():
    n, probes = 200, 30
    lam = np.sort(np.random.default_rng(4).standard_normal(n))
    gen = torch.Generator().manual_seed(0)
    a = torch.diag(torch.from_numpy(lam))
    nodes, weights = [], []
    for _ in range(probes):
        r = lanczos(lambda v: a @ v, torch.randn(n, generator=gen, dtype=torch.float64), n)
        nodes.append(r.values)
        weights.append(r.weights / probes)
    q = spectral_quantile(np.concatenate(nodes), np.concatenate(weights), 0.05)
    assert lam[5] <= q <= lam[15]  # the 5 % point is lam[9]; the probes' sampling error is a few eigenvalues


@pytest.mark.parametrize("call, word", [
    (lambda: lanczos(lambda v: v, torch.ones(3, dtype=torch.float64), 0), "steps"),
    (lambda: lanczos(lambda v: v, torch.zeros(3, dtype=torch.float64), 2), "zero vector"),
    (lambda: lanczos(lambda v: v[:2], torch.ones(3, dtype=torch.float64), 2), "same shape"),
    (lambda: lanczos(lambda v: v * float("nan"), torch.ones(3, dtype=torch.float64), 2), "non-finite"),
    (lambda: lanczos(lambda v: v, torch.ones(2, 2, dtype=torch.float64), 2), "1-D"),
    (lambda: power_iteration(lambda v: v, torch.ones(3), iters=0, tol=1e-3), "iters"),
    (lambda: power_iteration(lambda v: v, torch.ones(3), iters=3, tol=0.0), "tol"),
    (lambda: power_iteration(lambda v: v, torch.zeros(3), iters=3, tol=1e-3), "zero vector"),
    (lambda: spectral_quantile([1.0, 2.0], [1.0], 0.5), "equal length"),
    (lambda: spectral_quantile([1.0, 2.0], [1.0, -1.0], 0.5), "non-negative"),
    (lambda: spectral_quantile([1.0, 2.0], [1.0, 1.0], 1.0), "strictly between"),
    (lambda: spectral_quantile([], [], 0.5), "non-empty"),
])
def test_spectral_helpers_bad_input(call, word):
    with pytest.raises(HeadgameError, match=word):
        call()


# ----------------------------------------------------------------------------- head-output Hessian
def _setup(name: str):
    model = tiny_model(name, attn_implementation="eager").double()
    return model, HeadLayout.from_model(model), byte_tokenizer()


def _exact_hessian(model, layout, tok, ids, mask, layer):
    """Full Hessian of the mean loss in the o_proj input of ``layer``: [B·T·D, B·T·D]."""
    o_proj = layout.o_proj(model, layer)
    seen = {}
    h = o_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    with torch.no_grad():
        Objective(model, layout, tok)(ids, mask)
    h.remove()
    x0 = seen["x"]

    def f(x):
        hook = o_proj.register_forward_pre_hook(lambda m, a: (x, *a[1:]))
        try:
            out = Objective(model, layout, tok)(ids, mask)  # same seed: the same masking for BERT
        finally:
            hook.remove()
        return out.loss / out.n_targets

    hess = torch.autograd.functional.hessian(f, x0)  # [B, T, D, B, T, D]
    n = x0.numel()
    return hess.reshape(n, n).numpy(), x0.shape


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_curvature_matches_the_exact_hessian(name):
    model, layout, tok = _setup(name)
    ids = torch.tensor([[10, 57, 200, 33]])
    mask = torch.ones_like(ids)
    for layer in (0, 1):
        full, shape = _exact_hessian(model, layout, tok, ids, mask, layer)
        d = shape[-1]
        keep = np.repeat(active_positions(mask, layout.causal).reshape(-1).numpy(), d)
        if layout.causal:  # the last token reaches no target: its rows are exactly zero
            assert keep.sum() == 3 * d and np.all(full[~keep] == 0) and np.all(full[:, ~keep] == 0)
        hess = full[np.ix_(keep, keep)]
        scale = np.abs(hess).max()
        # Objective computes the cross-entropy in float32 (logits.float()): ~1e-7 relative rounding
        np.testing.assert_allclose(hess, hess.T, atol=1e-6 * scale)
        lam = np.linalg.eigvalsh((hess + hess.T) / 2)
        r = layer_curvature(model, layout, Objective(model, layout, tok), [(ids, mask)], [layer],
                            iters=100, lanczos_steps=40, probes=2, tol=1e-6)[layer]
        spread = np.abs(lam).max()
        gap = min(lam[-1] - lam[-2], lam[1] - lam[0])
        assert gap > 1e-3 * spread  # the comparison below resolves neighbouring eigenvalues
        assert r["n_variables"] == keep.sum()
        assert abs(r["L"] - lam[-1]) <= 1e-5 * spread
        assert abs(r["lambda_min"] - lam[0]) <= 1e-5 * spread
        assert lam[0] <= r["alpha_q05"] <= lam[-1]
    assert all(p.requires_grad for p in model.parameters())  # restored
    assert model.config._attn_implementation == "eager"


def test_hvp_is_the_exact_hessian_times_v_and_symmetric():
    model, layout, tok = _setup("tiny-qwen2")
    ids = torch.tensor([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    full, shape = _exact_hessian(model, layout, tok, ids, mask, 1)
    keep = np.repeat(active_positions(mask, True).reshape(-1).numpy(), shape[-1])
    n_t = int(mask[:, 1:].sum())  # the operator is the Hessian of the summed loss
    hess = full[np.ix_(keep, keep)] * n_t
    gen = torch.Generator().manual_seed(0)
    for _, n_targets, ops in hessian_blocks(model, layout, Objective(model, layout, tok), [(ids, mask)], [1]):
        assert n_targets == n_t
        op = ops[1]
        u, v = (torch.randn(op.n, generator=gen, dtype=torch.float64) for _ in range(2))
        hu, hv = op(u), op(v)
        ref = hess @ v.numpy()
        np.testing.assert_allclose(hv.numpy(), ref, atol=1e-5 * np.abs(ref).max())  # float32 cross-entropy
        assert float(u @ hv) == pytest.approx(float(hu @ v), rel=1e-5)


def test_padding_does_not_change_the_result():
    model, layout, tok = _setup("tiny-llama")
    a = torch.tensor([[10, 57, 200, 33, 5]])
    b = torch.tensor([[90, 12, 77]])
    pad = tok.pad_token_id
    padded = torch.tensor([[10, 57, 200, 33, 5], [90, 12, 77, pad, pad]])
    pmask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    kw = dict(iters=60, lanczos_steps=30, probes=1, tol=1e-6)
    obj = Objective(model, layout, tok)
    joint = layer_curvature(model, layout, obj, [(padded, pmask)], [0], **kw)[0]
    # the two rows as separate unpadded batches: the same block-diagonal Hessian
    split = layer_curvature(model, layout, obj, [(a, torch.ones_like(a)), (b, torch.ones_like(b))], [0], **kw)[0]
    assert joint["n_variables"] == split["n_variables"] == (4 + 2) * layout.n_heads * layout.head_dim
    assert joint["n_targets"] == split["n_targets"] == 6
    assert joint["L"] == pytest.approx(split["L"], rel=1e-5)
    assert joint["lambda_min"] == pytest.approx(split["lambda_min"], rel=1e-5)
    # trailing padding columns leave a single row's result unchanged, probes included
    one = layer_curvature(model, layout, obj, [(b, torch.ones_like(b))], [0], **kw)[0]
    b_pad = torch.tensor([[90, 12, 77, pad, pad, pad]])
    one_pad = layer_curvature(model, layout, obj, [(b_pad, torch.tensor([[1, 1, 1, 0, 0, 0]]))], [0], **kw)[0]
    for key in ("L", "lambda_min", "alpha_q05", "n_variables"):
        assert one_pad[key] == pytest.approx(one[key], rel=1e-6, abs=1e-12)


def test_float32_model_runs_every_layer_and_restores_state():
    model = tiny_model("tiny-llama")  # sdpa, float32
    layout, tok = HeadLayout.from_model(model), byte_tokenizer()
    model.train()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    res = layer_curvature(model, layout, Objective(model, layout, tok), [(ids, None)], [0, 1])
    for r in res.values():
        assert r["lambda_min"] <= r["alpha_q05"] <= r["L"] and r["hvps"] <= 2 * 20 + 2 * 20
        assert r["n_variables"] == 2 * 11 * layout.n_heads * layout.head_dim and r["seconds"] > 0
    assert model.training and model.config._attn_implementation == "sdpa"
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs, word", [
    ({"iters": 0}, "iters"),
    ({"lanczos_steps": 0}, "lanczos_steps"),
    ({"probes": 0}, "probes"),
    ({"tol": 0.0}, "tol"),
    ({"seed": -1}, "seed"),
    ({"layers": [5]}, "out of range"),
    ({"layers": []}, "no layers"),
    ({"batches": []}, "no batches"),
    ({"batches": [torch.ones(2, 3, dtype=torch.long)]}, "pair"),
    ({"batches": [(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4))]}, "differs"),
    ({"batches": [(torch.ones(3, dtype=torch.long), None)]}, r"\[B, T\]"),
    ({"batches": [(torch.ones(2, 1, dtype=torch.long), None)]}, "no prediction target"),
])
def test_layer_curvature_bad_input(kwargs, word):
    model = tiny_model("tiny-llama")
    layout, tok = HeadLayout.from_model(model), byte_tokenizer()
    args = {"batches": [(torch.ones(1, 4, dtype=torch.long), None)], "layers": [0]}
    args.update(kwargs)
    with pytest.raises(HeadgameError, match=word):
        layer_curvature(model, layout, Objective(model, layout, tok), args.pop("batches"), args.pop("layers"), **args)
