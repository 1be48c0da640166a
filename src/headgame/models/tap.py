"""HeadTap: scoped hooks that expose each attention head as a tensor axis.

For the chosen layers the tap can

* capture per-head outputs ``o`` of shape [B, T, H, dh] — the input of the output projection,
  reshaped (spec game-lora §2);
* capture their gradients during a backward pass (spec game-lora §3.2: the exact g_i, never a
  shortcut through the LM head);
* capture each head's argmax key index per query position, [B, T, H] (spec gt-fep §3.1);
* apply head gates: head i's output is scaled by g_i before the output projection (a gate of 0
  equals zeroing that head's W_O slice; a gate tensor that requires grad gives d loss / d gate).

Padded positions are excluded from every statistic: streaming callbacks receive only the valid
tokens, [N, H, dh], and padded query positions get argmax -1. All hooks are removed on exit, also
after an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from headgame.errors import HeadgameError
from headgame.models.layout import HeadLayout

TokenCallback = Callable[[int, torch.Tensor], None]


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
        keep_graph: keep the graph-connected o_proj inputs in ``self.inputs[layer]`` (for
            ``torch.autograd.grad``); off by default so no graph outlives its step.
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
        keep_graph: bool = False,
    ) -> None:
        self.model = model
        self.layout = layout
        self.layers = sorted({layout.check_layer(int(i)) for i in (range(layout.n_layers) if layers is None else layers)})
        self.keep_outputs = outputs
        self.keep_grads = grads
        self.want_argmax = argmax
        self.gates = {layout.check_layer(int(k)): v for k, v in (gates or {}).items()}
        for layer, gate in self.gates.items():
            if gate.numel() != layout.n_heads:
                raise HeadgameError(
                    f"gate for layer {layer} has {gate.numel()} entries but the layer has "
                    f"{layout.n_heads} heads; pass one gate value per query head"
                )
        self.on_output = on_output
        self.on_grad = on_grad
        self.keep_graph = keep_graph
        self.mask: torch.Tensor | None = None  # [B, T]; 1 = real token
        # switch off to run a backward pass (e.g. of a regulariser) without recording gradients
        self.capture_grads = True
        self.outputs: dict[int, torch.Tensor] = {}
        self.grads: dict[int, torch.Tensor] = {}
        self.argmax: dict[int, torch.Tensor] = {}
        self.inputs: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._prev_attn: str | None = None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> "HeadTap":
        try:
            if self.want_argmax:
                self._switch_to_eager()
            needs_input_hook = (
                self.keep_outputs or self.keep_grads or self.on_output or self.on_grad or self.keep_graph
            )
            for layer in self.layers:
                if needs_input_hook or layer in self.gates:
                    o_proj = self.layout.o_proj(self.model, layer)
                    self._handles.append(o_proj.register_forward_pre_hook(self._make_pre_hook(layer)))
                if self.want_argmax:
                    attn = self.layout.attention(self.model, layer)
                    self._handles.append(attn.register_forward_hook(self._make_attn_hook(layer)))
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
        if self._prev_attn is not None:
            self._set_attn(self._prev_attn)
            self._prev_attn = None

    def clear(self) -> None:
        """Forget the tensors kept from the previous batch."""
        self.outputs.clear()
        self.grads.clear()
        self.argmax.clear()
        self.inputs.clear()

    def set_mask(self, attention_mask: torch.Tensor | None) -> None:
        """Mark real tokens (1) and padding (0) of the next forward, shape [B, T]."""
        self.mask = None if attention_mask is None else attention_mask.bool()

    # ----------------------------------------------------------------- helpers
    def _base_model(self) -> nn.Module:
        inner = getattr(getattr(self.model, "base_model", None), "model", None)
        return inner if inner is not None and type(self.model).__name__.startswith("Peft") else self.model

    def _set_attn(self, impl: str) -> None:
        base = self._base_model()
        if hasattr(base, "set_attn_implementation"):
            base.set_attn_implementation(impl)
        else:  # pragma: no cover - very old transformers
            base.config._attn_implementation = impl

    def _switch_to_eager(self) -> None:
        current = getattr(self._base_model().config, "_attn_implementation", None)
        if current != "eager":
            self._prev_attn = current
            self._set_attn("eager")

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
        n_heads, head_dim = self.layout.n_heads, self.layout.head_dim
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
                    # regulariser reading self.inputs[layer] directly (spec game-lora §3.2).
                    x_proj = x.view_as(x)
                x_proj.register_hook(self._make_grad_hook(layer, bsz, seq))
            if self.keep_graph:
                self.inputs[layer] = x
            if x_proj is not args[0]:
                return (x_proj, *args[1:])
            return None

        return pre_hook

    def _make_grad_hook(self, layer: int, bsz: int, seq: int):
        n_heads, head_dim = self.layout.n_heads, self.layout.head_dim

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
                    f"layer {layer} returned no attention weights; the argmax tap needs eager attention "
                    "(load the model with attn_implementation='eager')"
                )
            # [B, H, Tq, S] -> argmax over keys -> [B, H, Tq] -> [B, Tq, H]
            idx = weights.detach().argmax(dim=-1).transpose(1, 2)
            if self.mask is not None:
                idx = idx.masked_fill(~self.mask.to(idx.device).unsqueeze(-1), -1)
            self.argmax[layer] = idx
            return None

        return attn_hook
