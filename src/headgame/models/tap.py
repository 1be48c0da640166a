"""HeadTap: scoped hooks that expose each attention head as a tensor axis.

For the chosen layers the tap can

* capture per-head outputs ``o`` of shape [B, T, H, dh] — the input of the output projection,
  reshaped;
* capture their gradients during a backward pass (docs/formulas.md, ρ: the exact g_i, never a
  shortcut through the LM head);
* capture each head's argmax key index per query position, [B, T, H] (GT-FEP symbols);
* stream each layer's attention map [B, H, T, S] to a callback, one layer alive at a time;
* apply head gates: head i's output is scaled by g_i before the output projection (a gate of 0
  equals zeroing that head's W_O slice; a gate tensor that requires grad gives d loss / d gate).

Padded positions are excluded from every statistic: streaming callbacks receive only the valid
tokens, [N, H, dh], and padded query positions get argmax -1. All hooks are removed on exit, also
after an exception.

Two small context managers sit beside it, so that no other module adds hooks or switches the
attention implementation: :func:`eager_attention` (SDPA returns no attention weights) and
:class:`activation_gradients` (a backward pass that reaches the activations but computes no
weight gradient).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from headgame.errors import HeadgameError
from headgame.models.families import family_for_model_type
from headgame.models.layout import HeadLayout, unwrap_peft

TokenCallback = Callable[[int, torch.Tensor], None]


def _set_attn(owner: nn.Module, impl: str) -> None:
    # the family knows how its models switch kernels (Falcon: only through the config)
    fam = family_for_model_type(getattr(getattr(owner, "config", None), "model_type", ""))
    if fam is not None:
        fam.set_attn_implementation(owner, impl)
    elif hasattr(owner, "set_attn_implementation"):
        owner.set_attn_implementation(impl)
    else:  # pragma: no cover - very old transformers
        owner.config._attn_implementation = impl


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with eager attention inside the block, restoring the previous implementation.

    SDPA and flash kernels never materialise the attention weights; the argmax tap, attention
    maps and FlopCounterMode (which counts SDPA as 0 FLOPs on CPU) need the eager path.
    """
    owner = unwrap_peft(model)
    prev = getattr(owner.config, "_attn_implementation", None)
    if prev != "eager":
        _set_attn(owner, "eager")
    try:
        yield
    finally:
        if prev is not None and prev != "eager":
            _set_attn(owner, prev)


class activation_gradients:
    """Context in which backward computes activation gradients only (no weight gradients).

    Every parameter is frozen and the input-embedding output becomes a leaf that requires
    grad, so the backward pass reaches every layer's o_proj input — all that gradient coupling
    and gate gradients need — at the cost of the activation half of a full backward. Restored
    on exit.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._saved: list[tuple[nn.Parameter, bool]] = []
        self._handle = None

    def __enter__(self) -> "activation_gradients":
        self._saved = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self._saved:
            p.requires_grad_(False)
        emb = self.model.get_input_embeddings()
        self._handle = emb.register_forward_hook(lambda mod, args, out: out.detach().requires_grad_())
        return self

    def __exit__(self, *exc) -> bool:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for p, flag in self._saved:
            p.requires_grad_(flag)
        return False


class HeadTap:
    """Context manager adding per-head hooks to ``layers`` of ``model``.

    Args:
        model: a Hugging Face model (or peft wrapper) described by ``layout``.
        layout: its :class:`HeadLayout`.
        layers: layer indices to tap (default: all).
        outputs: keep detached per-head outputs in ``self.outputs[layer]`` ([B, T, H, dh]).
        grads: keep per-head output gradients in ``self.grads[layer]`` ([B, T, H, dh]).
        argmax: keep argmax key indices in ``self.argmax[layer]`` ([B, T, H], -1 at padding).
            Switches the model to eager attention inside the context (SDPA returns no weights).
        gates: ``{layer: tensor[H]}`` multiplying each head's output before the projection.
        on_output: streaming callback ``fn(layer, o_valid [N, H, dh])`` (padding removed).
        on_grad: streaming callback ``fn(layer, g_valid [N, H, dh])`` during backward.
        on_attention: streaming callback ``fn(layer, weights [B, H, T, S])`` with each layer's
            detached attention map, padded query rows included (``tap.mask`` tells them
            apart). Switches to eager attention like ``argmax``.
        keep_graph: keep the graph-connected o_proj inputs in ``self.inputs[layer]`` (for
            ``torch.autograd.grad``); off by default so no graph outlives its step.
        block_inputs: layers whose graph-connected block input (the residual stream entering
            the layer, [B, T, d]) is kept in ``self.block_inputs[layer]``: every trainable
            parameter below the layer reaches the loss only through it (the cut of the
            representation-space Nash-MTL, train/repnash.py).
        per_layer_heads: read each layer's own query-head count (``self.n_heads[layer]``), so an
            unevenly pruned layer is tapped as [B, T, H_l, dh]; callers that stack layers need one
            H and leave this off, and then such layers are refused by name.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: HeadLayout,
        layers: Iterable[int] | None = None,
        *,
        outputs: bool = False,
        grads: bool = False,
        argmax: bool = False,
        gates: dict[int, torch.Tensor] | None = None,
        on_output: TokenCallback | None = None,
        on_grad: TokenCallback | None = None,
        on_attention: TokenCallback | None = None,
        keep_graph: bool = False,
        block_inputs: Iterable[int] = (),
        per_layer_heads: bool = False,
    ) -> None:
        self.model = model
        self.layout = layout
        self.layers = sorted({layout.check_layer(int(i)) for i in (range(layout.n_layers) if layers is None else layers)})
        self.keep_outputs = outputs
        self.keep_grads = grads
        self.want_argmax = argmax
        self.gates = {layout.check_layer(int(k)): v for k, v in (gates or {}).items()}
        if per_layer_heads:
            self.n_heads = {l: layout.heads_in(model, l) for l in sorted(set(self.layers) | set(self.gates))}
        else:
            self._check_head_counts(model, layout)
            self.n_heads = {l: layout.n_heads for l in sorted(set(self.layers) | set(self.gates))}
        for layer, gate in self.gates.items():
            if gate.numel() != self.n_heads[layer]:
                raise HeadgameError(
                    f"gate for layer {layer} has {gate.numel()} entries but the layer has "
                    f"{self.n_heads[layer]} heads; pass one gate value per query head"
                )
        self.on_output = on_output
        self.on_grad = on_grad
        self.on_attention = on_attention
        self.keep_graph = keep_graph
        self.block_input_layers = sorted({layout.check_layer(int(i)) for i in block_inputs})
        self.block_inputs: dict[int, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None  # [B, T]; 1 = real token
        # switch off to run a backward pass (e.g. of a regulariser) without recording gradients
        self.capture_grads = True
        self.outputs: dict[int, torch.Tensor] = {}
        self.grads: dict[int, torch.Tensor] = {}
        self.argmax: dict[int, torch.Tensor] = {}
        self.inputs: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._eager: contextlib.AbstractContextManager | None = None

    def _check_head_counts(self, model: nn.Module, layout: HeadLayout) -> None:
        """An unevenly pruned model keeps fewer heads in some layers than its config names; the
        taps read [B, T, H, dh] with one H per model, so such layers are refused by name."""
        from headgame.models.surgery import pruning_record

        rec = pruning_record(unwrap_peft(model))
        if rec is None or rec.is_uniform():
            return
        counts = rec.heads_per_layer()
        short = [l for l in sorted(set(self.layers) | set(self.gates)) if counts[l] != layout.n_heads]
        if short:
            full = [l for l, c in enumerate(counts) if c == layout.n_heads]
            where = f"--layers {','.join(map(str, full))} (the layers that kept every head), " if full else ""
            raise HeadgameError(
                f"layer(s) {','.join(map(str, short))} of this pruned model keep fewer than {layout.n_heads} query heads, and "
                f"head taps read one head count per model; use {where}the unpruned model, or a model pruned with "
                "--per-layer --selection group (the same whole groups in every layer)"
            )

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> "HeadTap":
        try:
            wants_weights = self.want_argmax or self.on_attention is not None
            if wants_weights:
                self._eager = eager_attention(self.model)
                self._eager.__enter__()
            needs_input_hook = (
                self.keep_outputs or self.keep_grads or self.on_output or self.on_grad or self.keep_graph
            )
            for layer in self.layers:
                if needs_input_hook or layer in self.gates:
                    o_proj = self.layout.o_proj(self.model, layer)
                    self._handles.append(o_proj.register_forward_pre_hook(self._make_pre_hook(layer)))
                if wants_weights:
                    attn = self.layout.attention(self.model, layer)
                    self._handles.append(attn.register_forward_hook(self._make_attn_hook(layer)))
            blocks = self.layout.blocks(self.model) if self.block_input_layers else []
            for layer in self.block_input_layers:
                self._handles.append(blocks[layer].register_forward_pre_hook(self._make_block_hook(layer), with_kwargs=True))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        return False

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._eager is not None:
            self._eager.__exit__(None, None, None)
            self._eager = None

    def clear(self) -> None:
        """Forget the tensors kept from the previous batch."""
        self.outputs.clear()
        self.grads.clear()
        self.argmax.clear()
        self.inputs.clear()
        self.block_inputs.clear()

    def set_mask(self, attention_mask: torch.Tensor | None) -> None:
        """Mark real tokens (1) and padding (0) of the next forward, shape [B, T]."""
        self.mask = None if attention_mask is None else attention_mask.bool()

    # ----------------------------------------------------------------- helpers
    def _valid(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H, dh] -> [N, H, dh] keeping only the non-pad positions."""
        if self.mask is None:
            return x.reshape(-1, *x.shape[2:])
        if self.mask.shape != x.shape[:2]:
            raise HeadgameError(
                f"attention mask of shape {tuple(self.mask.shape)} does not match the batch "
                f"{tuple(x.shape[:2])}; call tap.set_mask(attention_mask) with the batch's own mask"
            )
        return x[self.mask.to(x.device)]

    def _make_pre_hook(self, layer: int):
        n_heads, head_dim = self.n_heads[layer], self.layout.head_dim
        gate = self.gates.get(layer)

        def pre_hook(module: nn.Module, args: tuple):
            x = args[0]  # [B, T, H*dh]
            bsz, seq = x.shape[0], x.shape[1]
            if gate is not None:
                g = gate.to(device=x.device, dtype=x.dtype)
                # [B, T, H*dh] -> [B, T, H, dh] * [H, 1] -> [B, T, H*dh]
                x = (x.view(bsz, seq, n_heads, head_dim) * g.view(n_heads, 1)).reshape(bsz, seq, -1)
            heads = x.detach().view(bsz, seq, n_heads, head_dim)  # [B, T, H, dh]
            if self.keep_outputs:
                self.outputs[layer] = heads
            if self.on_output is not None:
                self.on_output(layer, self._valid(heads))
            x_proj = x
            if (self.keep_grads or self.on_grad is not None) and x.requires_grad:
                if self.keep_graph:
                    # The projection reads an alias, so the hook sees only the gradient that
                    # arrives through the output projection (the LM loss), not that of a
                    # regulariser reading self.inputs[layer] directly (docs/formulas.md, ρ).
                    x_proj = x.view_as(x)
                x_proj.register_hook(self._make_grad_hook(layer, bsz, seq))
            if self.keep_graph:
                self.inputs[layer] = x
            if x_proj is not args[0]:
                return (x_proj, *args[1:])
            return None

        return pre_hook

    def _make_block_hook(self, layer: int):
        def block_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(x, torch.Tensor):
                raise HeadgameError(f"layer {layer}'s block was called without its hidden states as the first argument; "
                                    "this model's block signature is not supported by the block-input tap")
            self.block_inputs[layer] = x  # graph-connected [B, T, d]
            return None

        return block_hook

    def _make_grad_hook(self, layer: int, bsz: int, seq: int):
        n_heads, head_dim = self.n_heads[layer], self.layout.head_dim

        def grad_hook(grad: torch.Tensor) -> None:
            if not self.capture_grads:
                return None
            g = grad.detach().view(bsz, seq, n_heads, head_dim)  # [B, T, H*dh] -> [B, T, H, dh]
            if self.keep_grads:
                self.grads[layer] = g
            if self.on_grad is not None:
                self.on_grad(layer, self._valid(g))
            return None

        return grad_hook

    def _make_attn_hook(self, layer: int):
        def attn_hook(module: nn.Module, args: tuple, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise HeadgameError(
                    f"layer {layer} returned no attention weights; the attention tap needs eager attention "
                    "(load the model with attn_implementation='eager')"
                )
            weights = weights.detach()  # [B, H, Tq, S]
            if self.on_attention is not None:
                self.on_attention(layer, weights)
            if self.want_argmax:
                # [B, H, Tq, S] -> argmax over keys -> [B, H, Tq] -> [B, Tq, H]
                idx = weights.argmax(dim=-1).transpose(1, 2)
                if self.mask is not None:
                    idx = idx.masked_fill(~self.mask.to(idx.device).unsqueeze(-1), -1)
                self.argmax[layer] = idx
            return None

        return attn_hook
