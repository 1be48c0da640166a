"""HeadTap invariants on every tiny architecture (DESIGN.md: tests of invariants)."""

from __future__ import annotations

import copy

import pytest
import torch

from headgame.errors import HeadgameError
from headgame.models.objective import Objective
from headgame.models.tap import HeadTap, activation_gradients, eager_attention
from tests.conftest import heads_and_projections, random_batch


def _forward(loaded, ids, mask):
    return loaded.model(input_ids=ids, attention_mask=mask).logits


def test_heads_times_slices_sum_to_attention_output(tiny):
    model, _, layout = tiny
    ids, mask = random_batch(model.config.vocab_size)
    outputs, proj_out = heads_and_projections(model, layout, lambda tap: (tap.set_mask(mask), _forward(tiny, ids, mask)))
    for layer in range(layout.n_layers):
        o = outputs[layer]  # [B, T, H, dh]
        assert o.shape == (*ids.shape, layout.n_heads, layout.head_dim)
        w = layout.head_slices(model, layer)  # [H, d, dh]
        recon = torch.einsum("bthd,hmd->btm", o, w)
        bias = layout.o_proj_bias(model, layer)
        if bias is not None:
            recon = recon + bias
        torch.testing.assert_close(recon, proj_out[layer], atol=1e-5, rtol=1e-5)


def test_captured_gradient_equals_autograd(tiny):
    model, tok, layout = tiny
    ids, mask = random_batch(model.config.vocab_size, pad_last=3)
    objective = Objective(model, layout, tok, seed=0)
    with HeadTap(model, layout, grads=True, keep_graph=True) as tap:
        tap.set_mask(mask)
        loss = objective(ids, mask).loss
        inputs = [tap.inputs[l] for l in range(layout.n_layers)]
        expected = torch.autograd.grad(loss, inputs, retain_graph=True)
        tap.grads.clear()
        loss.backward()
    for layer, exp in enumerate(expected):
        # [B, T, H*dh] -> [B, T, H, dh]
        exp = exp.view(*ids.shape, layout.n_heads, layout.head_dim)
        torch.testing.assert_close(tap.grads[layer], exp, atol=1e-7, rtol=1e-6)
        assert tap.grads[layer].abs().sum() > 0


def test_gate_zero_equals_zeroed_output_slice(tiny):
    model, _, layout = tiny
    ids, mask = random_batch(model.config.vocab_size)
    head, layer = 1, layout.n_layers - 1
    gate = torch.ones(layout.n_heads)
    gate[head] = 0.0
    with torch.no_grad():
        with HeadTap(model, layout, layers=[layer], gates={layer: gate}):
            gated = _forward(tiny, ids, mask)
        plain = _forward(tiny, ids, mask)  # hooks are gone: the original model again
        zeroed = copy.deepcopy(model)
        proj = layout.o_proj(zeroed, layer)
        cols = slice(head * layout.head_dim, (head + 1) * layout.head_dim)
        if layout.o_proj_kind == "conv1d":
            proj.weight[cols, :] = 0.0  # Conv1D weight is [in, out]
        else:
            proj.weight[:, cols] = 0.0
        surgical = zeroed(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(gated, surgical, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(gated, plain)


def test_gate_gradient_is_output_times_gradient():
    from headgame.models.load import load_model

    model, tok, layout = load_model("tiny-llama")
    ids, mask = random_batch(model.config.vocab_size)
    gate = torch.ones(layout.n_heads, requires_grad=True)
    with HeadTap(model, layout, layers=[0], gates={0: gate}, outputs=True, grads=True) as tap:
        tap.set_mask(mask)
        Objective(model, layout, tok)(ids, mask).loss.backward()
    # d loss / d g_i = Σ_{b,t,d} o_i · ∂loss/∂(g_i o_i) with o the ungated output (g = 1 here)
    expected = (tap.outputs[0] * tap.grads[0]).sum(dim=(0, 1, 3))
    torch.testing.assert_close(gate.grad, expected, atol=1e-6, rtol=1e-5)


def test_padding_excluded_from_callbacks_and_argmax(tiny):
    model, _, layout = tiny
    ids, mask = random_batch(model.config.vocab_size, pad_last=4)
    seen = {}
    with HeadTap(model, layout, argmax=True, on_output=lambda l, o: seen.__setitem__(l, o.shape)) as tap, torch.no_grad():
        tap.set_mask(mask)
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    n_valid = int(mask.sum())
    for layer in range(layout.n_layers):
        assert seen[layer] == (n_valid, layout.n_heads, layout.head_dim)
        idx = tap.argmax[layer]  # [B, T, H]
        assert (idx[mask == 0] == -1).all()
        assert (idx[mask == 1] >= 0).all()
        # same as the argmax of the attention maps the model itself returns in eager mode
        ref = out.attentions[layer].argmax(-1).transpose(1, 2)
        assert torch.equal(idx[mask == 1], ref[mask == 1])
        if layout.causal:
            pos = torch.arange(ids.shape[1]).view(1, -1, 1)
            assert (idx <= pos).all()
        # padded keys never win
        assert (idx[mask == 1] < mask.sum(1).view(-1, 1, 1).expand_as(idx)[mask == 1]).all()
    assert model.config._attn_implementation == "sdpa"  # restored on exit


def test_attention_callback_streams_the_models_own_maps(tiny):
    model, _, layout = tiny
    ids, mask = random_batch(model.config.vocab_size, pad_last=3)
    seen = {}
    with HeadTap(model, layout, on_attention=lambda l, a: seen.__setitem__(l, a)) as tap, torch.no_grad():
        tap.set_mask(mask)
        assert model.config._attn_implementation == "eager"
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert sorted(seen) == list(range(layout.n_layers)) and not tap.argmax  # argmax not asked for
    for layer in range(layout.n_layers):
        torch.testing.assert_close(seen[layer], out.attentions[layer])  # [B, H, T, S]
    assert model.config._attn_implementation == "sdpa"


def test_eager_attention_and_activation_gradients_restore_the_model():
    from headgame.models.load import load_model

    model, tok, layout = load_model("tiny-llama")
    with eager_attention(model):
        assert model.config._attn_implementation == "eager"
        with eager_attention(model):  # nested: the inner block leaves eager in place
            pass
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    n_hooks = sum(len(m._forward_hooks) for m in model.modules())
    ids, mask = random_batch(model.config.vocab_size)
    with activation_gradients(model):
        assert not any(p.requires_grad for p in model.parameters())
        with HeadTap(model, layout, layers=[0], grads=True) as tap:
            tap.set_mask(mask)
            Objective(model, layout, tok)(ids, mask).loss.backward()
        assert tap.grads[0].abs().sum() > 0  # the activations still get their gradient
        assert all(p.grad is None for p in model.parameters())  # the weights get none
    assert all(p.requires_grad for p in model.parameters())
    assert sum(len(m._forward_hooks) for m in model.modules()) == n_hooks


def test_hooks_removed_after_exception():
    from headgame.models.load import load_model

    model, _, layout = load_model("tiny-gpt2")

    def n_hooks():
        return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())

    before = n_hooks()
    with pytest.raises(RuntimeError):
        with HeadTap(model, layout, outputs=True, argmax=True):
            assert n_hooks() > before
            raise RuntimeError("boom")
    assert n_hooks() == before
    assert model.config._attn_implementation == "sdpa"


def test_bad_gate_and_layer_rejected():
    from headgame.models.load import load_model

    model, _, layout = load_model("tiny-llama")
    with pytest.raises(HeadgameError, match="gate"):
        HeadTap(model, layout, gates={0: torch.ones(layout.n_heads + 1)})
    with pytest.raises(HeadgameError, match="out of range"):
        HeadTap(model, layout, layers=[layout.n_layers])
