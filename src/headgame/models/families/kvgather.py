"""Attention for layers whose kept query heads are spread unevenly over their kept KV heads.

Such a layer keeps only its kept KV heads in ``k_proj``/``v_proj``, and so in the KV cache; each
query head meets its KV head after the cache, inside the attention function, by the layer's
``headgame_kv_index`` buffer (kept query head j reads kept KV head index[j]): SDPA runs once per
kept KV head with that head's run of query heads as a GQA group, reading K and V in place; the
eager path (attention maps) copies them out per query head. A first version copied K/V out per
query head in SDPA too: decoding at batch 8 and 2,048 tokens of context ran at 0.42x the base. Handing
them out before the cache (a per-query-head copy of K and V) would grow the cache past the
unpruned model's: on SmolLM2 at 20 % of heads pruned one at a time, 2.1 × (docs/formulas.md#surgery).

The functions are registered with transformers' attention and mask interfaces as
``headgame_sdpa`` and ``headgame_eager``; a pruned model with such layers runs under them
(:func:`route`), and :func:`implementation_for` maps a requested kernel to its gathered twin.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

PREFIX = "headgame_"
KERNELS = ("sdpa", "eager")


def _gather(module: Any, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    index = getattr(module, "headgame_kv_index", None)
    if index is None:
        return key, value
    # [B, KV, T, dh] -> [B, Hq, T, dh]: query head j reads kept KV head index[j]
    return key.index_select(1, index), value.index_select(1, index)


def _spans(index: torch.Tensor) -> list[tuple[int, int, int]] | None:
    """(kept KV head, first query head, end) of each run of query heads sharing a KV head; None
    when a KV head's query heads are not one contiguous run."""
    idx = index.tolist()
    spans: list[tuple[int, int, int]] = []
    for q, kv in enumerate(idx):
        if spans and spans[-1][0] == kv:
            spans[-1] = (kv, spans[-1][1], q + 1)
        elif any(s[0] == kv for s in spans):
            return None
        else:
            spans.append((kv, q, q + 1))
    return spans


def _sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    index = getattr(module, "headgame_kv_index", None)
    spans = None if index is None else _spans(index)
    if spans is None:
        key, value = _gather(module, key, value)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # One SDPA call per kept KV head with its run of query heads as a GQA group: K and V are read
    # in place (SDPA's GQA / HF's single-token packing), never copied out per query head.
    outs = []
    groups = module.num_key_value_groups
    try:
        for kv, a, b in spans:
            module.num_key_value_groups = b - a
            out, _ = sdpa_attention_forward(module, query[:, a:b], key[:, kv:kv + 1], value[:, kv:kv + 1], attention_mask, **kwargs)
            outs.append(out)  # [B, T, n_j, dh]
    finally:
        module.num_key_value_groups = groups
    return torch.cat(outs, dim=2), None


def _eager(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any):
    # the model's own eager function (softcapping, sinks and the like stay the model's)
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    key, value = _gather(module, key, value)
    return eager(module, query, key, value, attention_mask, **kwargs)


_REGISTERED = False


def register() -> None:
    """Register ``headgame_sdpa`` and ``headgame_eager`` (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(PREFIX + "sdpa", _sdpa)
    AttentionInterface.register(PREFIX + "eager", _eager)
    AttentionMaskInterface.register(PREFIX + "sdpa", sdpa_mask)
    AttentionMaskInterface.register(PREFIX + "eager", eager_mask)
    _REGISTERED = True


def has_gathered_layers(model: Any) -> bool:
    return any(getattr(m, "headgame_kv_index", None) is not None for m in model.modules())


def implementation_for(model: Any, impl: str) -> str:
    """The kernel ``model`` should run when ``impl`` is asked for: its gathered twin where the
    model has gathered layers (sdpa, eager), else ``impl``."""
    base = impl[len(PREFIX):] if impl.startswith(PREFIX) else impl
    if base in KERNELS and has_gathered_layers(model):
        register()
        return PREFIX + base
    return base


def _set(config: Any, impl: str) -> None:
    config._attn_implementation = impl
    for name in ("text_config", "vision_config"):
        sub = getattr(config, name, None)
        if sub is not None and sub is not config:
            sub._attn_implementation = impl


def route(model: Any) -> None:
    """Run ``model`` under the gathered kernels when it has gathered layers (after surgery)."""
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    wanted = implementation_for(model, current)
    if wanted != current:
        _set(model.config, wanted)


def set_implementation(model: Any, impl: str) -> bool:
    """Switch a model with gathered layers to ``impl``'s gathered twin; False when it has none
    (the caller then switches the plain way)."""
    wanted = implementation_for(model, impl)
    if not wanted.startswith(PREFIX):
        return False
    _set(model.config, wanted)
    return True
