"""Where a model runs: its device, moving batches to it, and a clock that waits for the GPU.

Every command resolves its ``--device`` with :func:`headgame.config.resolve_device`, moves the
model there once (:func:`place`) and moves each batch to the model (:func:`to_model`), so that
batch building stays on the CPU and nothing names a device of its own. Statistics that are
summed over batches (Grams, moments) follow the device of their first update and are copied to
the CPU, in float64, only to be analysed or saved.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (cpu for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_model(model: nn.Module, *tensors: torch.Tensor | None) -> tuple[Any, ...]:
    """``tensors`` on ``model``'s device (None stays None; a tensor already there is not copied)."""
    dev = model_device(model)
    return tuple(None if t is None else t.to(dev, non_blocking=True) for t in tensors)


def place(loaded: Any, device: "str | torch.device") -> Any:
    """Move a :class:`~headgame.models.loaded.LoadedModel` (or a bare model) to ``device``; records
    the device in ``loaded.info["device"]``. Returns its argument."""
    dev = torch.device(device)
    model = getattr(loaded, "model", loaded)
    model.to(dev)
    if hasattr(loaded, "info"):
        loaded.info["device"] = str(dev)
    return loaded


def synchronize(device: "torch.device | str | None" = None) -> None:
    """Wait for the queued GPU work of ``device`` (nothing on the CPU), so that a clock read after
    it measures the work and not its launch."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(dev)


def compile_in_place(*modules: nn.Module, dynamic: bool | None = None) -> int:
    """``torch.compile`` (inductor) each module in place (``nn.Module.compile``): the module keeps
    its identity, parameters and submodules, so hooks and layouts that find it still do; its
    forward is compiled at its first call. ``dynamic=True`` compiles for symbolic shapes at once
    (inputs whose batch and length change at every call, as in eval); None lets torch decide
    (a shape that changes is made symbolic at its first recompilation). Returns the number compiled."""
    for m in modules:
        m.compile(dynamic=dynamic)
    return len(modules)


def compile_outside_attention(model: nn.Module, blocks: list[nn.Module], attn_name: str) -> int:
    """Compile every child of each transformer block except its attention (``attn_name``, the
    first part of the family's attention path): the MLPs and norms run compiled while the
    attention, where :class:`~headgame.models.tap.HeadTap` adds and removes its hooks every
    step, stays eager (a compiled graph would recompile at every new hook)."""
    return compile_in_place(*(child for block in blocks for name, child in block.named_children() if name != attn_name))
