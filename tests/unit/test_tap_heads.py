"""HeadTap's per-head outputs against attention computed here, head by head, from the weights.

The sum identity of test_tap.py (heads times their W_O slices add up to the attention output)
holds for any order of the heads, since a sum does not care which head is which. Here each head
h is computed on its own from the layer's input and the q/k/v weights: causal softmax attention
(Vaswani et al. 2017, Eq. 1) with, for Llama and Qwen2, rotary position embeddings (Su et al.
2021) in the half-split layout Hugging Face uses, and grouped-query attention (Ainslie et al.
2023): query head h reads key/value head h // (H / H_kv). The tapped [B, T, H, dh] tensor must
match head for head, and the heads must differ enough that a swapped pair would show.
"""

from __future__ import annotations

import math

import pytest
import torch

from headgame.models.load import load_model
from headgame.models.tap import HeadTap

SHARPEN = 30.0  # random init gives near-uniform attention; sharper q·k makes heads that share K/V differ


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One head: q, k, v [B, T, dh] -> [B, T, dh]."""
    t = q.shape[1]
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # [B, T, T]
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate x [B, T, dh] by position: pairs (i, i + dh/2) turn by pos · theta^(−2i/dh)."""
    t, dh = x.shape[1], x.shape[2]
    inv_freq = 1.0 / theta ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh)  # [dh/2]
    angle = torch.arange(t, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [T, dh/2]
    cos, sin = torch.cat([angle.cos(), angle.cos()], -1), torch.cat([angle.sin(), angle.sin()], -1)  # [T, dh]
    first, second = x[..., : dh // 2], x[..., dh // 2:]
    return x * cos + torch.cat([-second, first], -1) * sin


def _llama_like_heads(model, layer: int, hidden: torch.Tensor) -> list[torch.Tensor]:
    cfg = model.config
    block = model.model.layers[layer]
    norm = block.input_layernorm
    x = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight  # RMSNorm
    attn = block.self_attn
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    dh = attn.q_proj.weight.shape[0] // n_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))

    def proj(linear, head):  # rows head·dh … (head+1)·dh of the projection: that head's map
        w = linear.weight[head * dh:(head + 1) * dh]
        out = x @ w.T
        return out + linear.bias[head * dh:(head + 1) * dh] if linear.bias is not None else out

    heads = []
    for h in range(n_heads):
        kv = h // (n_heads // n_kv)
        q, k, v = _rope(proj(attn.q_proj, h), theta), _rope(proj(attn.k_proj, kv), theta), proj(attn.v_proj, kv)
        heads.append(_causal_attention(q, k, v))
    return heads


def _gpt2_heads(model, layer: int, hidden: torch.Tensor) -> list[torch.Tensor]:
    block = model.transformer.h[layer]
    ln = block.ln_1
    mean, var = hidden.mean(-1, keepdim=True), hidden.var(-1, keepdim=True, unbiased=False)
    x = (hidden - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias  # LayerNorm
    d = x.shape[-1]
    n_heads = model.config.n_head
    dh = d // n_heads
    w, b = block.attn.c_attn.weight, block.attn.c_attn.bias  # Conv1D: [d, 3d], columns q | k | v

    def proj(part, head):
        cols = slice(part * d + head * dh, part * d + (head + 1) * dh)
        return x @ w[:, cols] + b[cols]

    return [_causal_attention(proj(0, h), proj(1, h), proj(2, h)) for h in range(n_heads)]


def _sharpen(model, name: str) -> None:
    with torch.no_grad():
        if name == "tiny-gpt2":
            for block in model.transformer.h:
                d = block.attn.c_attn.weight.shape[0]
                block.attn.c_attn.weight[:, : 2 * d] *= SHARPEN  # the q and k columns
        else:
            for block in model.model.layers:
                block.self_attn.q_proj.weight *= SHARPEN
                block.self_attn.k_proj.weight *= SHARPEN


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gpt2"])
def test_tapped_heads_equal_attention_computed_per_head(name):
    model, _, layout = load_model(name)
    _sharpen(model, name)
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 256, (2, 11), generator=gen)
    with torch.no_grad(), HeadTap(model, layout, outputs=True) as tap:
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # [L+1] × [B, T, d]
    ours_fn = _gpt2_heads if name == "tiny-gpt2" else _llama_like_heads
    for layer in range(layout.n_layers):
        tapped = tap.outputs[layer]  # [B, T, H, dh]
        with torch.no_grad():
            ours = ours_fn(model, layer, hidden[layer])  # H × [B, T, dh]
        assert tapped.shape == (2, 11, len(ours), ours[0].shape[-1])
        for h, o in enumerate(ours):
            torch.testing.assert_close(tapped[:, :, h], o, atol=2e-5, rtol=1e-4, msg=f"layer {layer} head {h}")
        # every pair of heads differs far beyond that tolerance: a wrong order cannot pass
        for a in range(len(ours)):
            for b in range(a + 1, len(ours)):
                assert float((ours[a] - ours[b]).abs().max()) > 1e-2, (layer, a, b)
