"""Curvature of the LM loss in a layer's head outputs: the L and α of the PoA bound.

The GAME-LoRA specification (section 3.5, "PoA") bounds the Price of Anarchy by
(1 + β_R + β_C) / (1 − (L/α)·Γ(G)²) without saying how L and α are found. Here they are measured.

* Variable: layer ℓ's head outputs, the input of its output projection ([B, T, H·dh]), at the
  positions that reach at least one target. Padding is left out, and so is the last real token
  of each causal sequence: nothing reads it (its own logits predict a padded or missing token),
  so its Hessian rows are exactly zero and would make α = 0 whatever the model.
* Function: the mean cross-entropy per target over all the given batches (``Objective``'s sum
  divided by the total number of targets). A batch's loss depends only on its own outputs, so
  the Hessian is block-diagonal with one block per batch: its spectrum is the union of the
  blocks' spectra, L = max over blocks, λ_min = min over blocks, and the spectral density is the
  mixture of the blocks' densities weighted by their sizes. Blocks are handled one at a time, so
  only one batch's graph is alive. Note that every eigenvalue scales with 1/(total targets); the
  ratio κ = L/α, all the bound uses, does not.
* Hessian-vector products by double backward: one forward pass per batch keeps the graph, the
  gradient with respect to the outputs is taken once with ``create_graph``, and each product
  H v is ``autograd.grad(grad, outputs, v)`` (no further forward). Parameters are frozen during
  the measurement (restored afterwards); the outputs become differentiable through HeadTap gates
  of exactly 1, and attention runs eagerly (the fused SDPA kernels have no double backward).
  The model is put in eval mode (no dropout) and restored.
* Estimates per block: ``probes`` Lanczos runs of ``lanczos_steps`` steps from seeded Gaussian
  probes (full re-orthogonalisation) give Ritz values and Gauss weights. L is then refined by
  power iteration on H − θ_min I from the top Ritz vector and λ_min by power iteration on
  θ_max I − H from the bottom Ritz vector, each for at most ``iters`` products, stopping when the
  residual ‖Hv − θv‖ ≤ tol·max(|θ_max|, |θ_min|). Every estimate is a Rayleigh quotient, so
  L is never above the true top eigenvalue and λ_min never below the true bottom one; the best of
  the Ritz and power values is kept. ``alpha_q05`` is the 5 % quantile of the stochastic Lanczos
  quadrature density (``headgame.game.poa.spectral_quantile``).

Cost per layer and batch: ``probes``·``lanczos_steps`` + at most 2·``iters`` products, each
about one double backward through the layers above ℓ; plus one forward and one backward per
batch shared by all the requested layers.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from headgame.errors import HeadgameError
from headgame.game.poa import lanczos, power_iteration, spectral_quantile
from headgame.models.layout import HeadLayout
from headgame.models.tap import HeadTap, eager_attention

__all__ = ["layer_curvature", "hessian_blocks", "HeadOutputHessian", "active_positions"]

QUANTILE = 0.05  # the robust low quantile reported as alpha_q05


def active_positions(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """[B, T] bool: the real positions whose head outputs reach at least one target.

    Causal LM: position t is read by the logits at positions ≥ t, which predict the tokens
    t+1, …; it reaches a target iff a real token follows it. Masked LM: attention is
    bidirectional, so every real position reaches the masked targets.
    """
    real = attention_mask.bool()
    if not causal:
        return real
    later = torch.flip(torch.cumsum(torch.flip(real.long(), [1]), 1), [1]) - real.long()  # real tokens after t
    return real & (later > 0)


@contextlib.contextmanager
def _measuring(model: nn.Module) -> Iterator[None]:
    """Frozen parameters, eval mode and eager attention; everything restored on exit."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        model.eval()
        with eager_attention(model):
            yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        model.train(training)


def _check_int(name: str, value: Any, lo: int, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise HeadgameError(f"{name} must be an integer >= {lo}, got {value!r}; pass e.g. {name}={example}")
    return value


def _batches(batches: Iterable[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i, b in enumerate(batches):
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[0], torch.Tensor)):
            raise HeadgameError(f"batch {i} is not an (input_ids, attention_mask) pair; pass e.g. "
                                "list(headgame.data.texts.sequence_batches(seqs, batch_size))")
        ids, mask = b
        if ids.dim() != 2:
            raise HeadgameError(f"batch {i}: input_ids must be [B, T], got shape {tuple(ids.shape)}")
        mask = torch.ones_like(ids) if mask is None else mask
        if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
            raise HeadgameError(f"batch {i}: attention_mask shape {tuple(getattr(mask, 'shape', ()))} differs from "
                                f"input_ids {tuple(ids.shape)}; pass the batch's own mask")
        out.append((ids, mask))
    if not out:
        raise HeadgameError("no batches given; pass at least one (input_ids, attention_mask) batch")
    return out


class HeadOutputHessian:
    """v ↦ H v for one batch: H is the Hessian of that batch's summed loss in the active head
    outputs of one layer (vectors are flat, [n_active·D])."""

    def __init__(self, x: torch.Tensor, grad: torch.Tensor, active: torch.Tensor) -> None:
        self.x, self.grad = x, grad  # [B, T, D] outputs and d loss / d outputs (with graph)
        self.active = active.to(x.device)  # [B, T]
        self.n = int(self.active.sum()) * x.shape[-1]
        self.calls = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.n,):
            raise HeadgameError(f"the Hessian acts on vectors of shape ({self.n},), got {tuple(v.shape)}")
        self.calls += 1
        if not self.grad.requires_grad:  # the gradient is a constant (no target): H = 0
            return torch.zeros_like(v)
        full = torch.zeros_like(self.x)  # [B, T, D]; inactive positions stay 0
        full[self.active] = v.view(-1, self.x.shape[-1]).to(device=self.x.device, dtype=self.x.dtype)
        (hv,) = torch.autograd.grad(self.grad, self.x, full, retain_graph=True, allow_unused=True)
        if hv is None:  # the gradient does not depend on the outputs: H = 0
            return torch.zeros_like(v)
        return hv[self.active].reshape(-1).to(device=v.device, dtype=v.dtype)  # [B, T, D] -> [n]


def hessian_blocks(
    model: nn.Module, layout: HeadLayout, objective: Any, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    layers: Iterable[int],
) -> Iterator[tuple[int, int, dict[int, HeadOutputHessian]]]:
    """Per batch, (batch index, its number of targets, {layer: HeadOutputHessian}).

    One forward and one backward (with ``create_graph``) per batch serve every layer; the batch's
    graph lives until the next batch is drawn. Parameters stay frozen, the model in eval mode
    and attention eager until the generator is exhausted or closed.
    """
    layer_ids = sorted({layout.check_layer(int(l)) for l in layers})
    if not layer_ids:
        raise HeadgameError("no layers given; pass e.g. layers=[layout.n_layers - 1]")
    data = _batches(batches)
    with _measuring(model):
        gates = {l: torch.ones(layout.heads_in(model, l), requires_grad=True) for l in layer_ids}
        for bi, (ids, mask) in enumerate(data):
            with HeadTap(model, layout, layer_ids, gates=gates, keep_graph=True, per_layer_heads=True) as tap:
                out = objective(ids, mask)
            xs = [tap.inputs[l] for l in layer_ids]  # graph-connected [B, T, H·dh] each
            if int(out.n_targets) > 0:
                grads = torch.autograd.grad(out.loss, xs, create_graph=True, allow_unused=True)
            else:  # no target: the loss is a constant 0
                grads = [None] * len(xs)
            active = active_positions(mask, layout.causal)
            ops = {}
            for l, x, g in zip(layer_ids, xs, grads):
                ops[l] = HeadOutputHessian(x, torch.zeros_like(x) if g is None else g, active)
            yield bi, int(out.n_targets), ops
            del out, xs, grads, ops, tap


def _block_spectrum(op: HeadOutputHessian, gen: torch.Generator, *, iters: int, steps: int, probes: int, tol: float) -> dict:
    """Lanczos probes and the two power refinements for one block (summed-loss units)."""
    runs = []
    for _ in range(probes):
        v0 = torch.randn(op.n, generator=gen, dtype=torch.float64).to(op.x.device)  # drawn on the CPU: same on any device
        runs.append(lanczos(op, v0, steps))
    lo_run = min(runs, key=lambda r: r.values[0])
    hi_run = max(runs, key=lambda r: r.values[-1])
    theta_min, theta_max = float(lo_run.values[0]), float(hi_run.values[-1])
    spread = max(abs(theta_min), abs(theta_max))
    top = power_iteration(lambda v: op(v) - theta_min * v, hi_run.ritz_vector(-1), iters=iters, tol=tol, scale=spread)
    bottom = power_iteration(lambda v: theta_max * v - op(v), lo_run.ritz_vector(0), iters=iters, tol=tol, scale=spread)
    top_value = top["value"] + theta_min  # Rayleigh quotient of H at the final vector
    bottom_value = theta_max - bottom["value"]
    return {
        "runs": runs,
        "L": max(top_value, theta_max), "L_lanczos": theta_max,
        "L_iters": top["iters"], "L_converged": top["converged"], "L_residual": top["residual"],
        "lambda_min": min(bottom_value, theta_min), "lambda_min_lanczos": theta_min,
        "lambda_min_iters": bottom["iters"], "lambda_min_converged": bottom["converged"],
        "lambda_min_residual": bottom["residual"],
    }


def layer_curvature(
    model: nn.Module,
    layout: HeadLayout,
    objective: Any,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    layers: Iterable[int],
    *,
    iters: int = 20,
    lanczos_steps: int = 20,
    probes: int = 2,
    seed: int = 0,
    tol: float = 1e-3,
) -> dict[int, dict[str, Any]]:
    """Curvature of the mean LM loss in each layer's head outputs (see the module docstring).

    Args:
        model, layout: the model and its :class:`HeadLayout`.
        objective: ``headgame.models.objective.Objective(model, layout, tokenizer)``; called once
            per batch (so a masked-LM objective draws one masking per batch, shared by all layers).
        batches: (input_ids [B, T], attention_mask [B, T] or None) pairs.
        layers: layer indices (0-based).
        iters: at most this many power-iteration products for each of L and λ_min, per batch.
        lanczos_steps, probes: Lanczos steps per probe and probes per batch (≥ 1 each).
        seed: seeds the probes (per layer, so a layer's result does not depend on the others).
        tol: relative residual at which a power iteration counts as converged.

    Returns:
        {layer: {"L", "L_converged", "L_iters", "L_residual", "L_lanczos", "lambda_min",
        "lambda_min_converged", "lambda_min_iters", "lambda_min_residual", "alpha_q05",
        "n_variables", "n_targets", "n_batches", "hvps", "seconds", "per_batch"}}. Eigenvalues are
        those of the Hessian of the mean loss per target; residuals are in the same units;
        ``L_iters``/``lambda_min_iters`` are the most any batch needed, ``L_converged``/
        ``lambda_min_converged`` whether every batch converged; ``seconds`` is the layer's
        products plus its share of the batches' forward and backward passes; ``per_batch`` holds
        each block's L and λ_min in units of that batch's own mean loss, with its iterations and
        flags. Probes are drawn on the CPU, so a seed gives the same probes on every device.
    """
    iters = _check_int("iters", iters, 1, 20)
    lanczos_steps = _check_int("lanczos_steps", lanczos_steps, 1, 20)
    probes = _check_int("probes", probes, 1, 2)
    _check_int("seed", seed, 0, 0)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol > 0):
        raise HeadgameError(f"tol must be a positive number, got {tol!r}; use e.g. 1e-3")
    if isinstance(layers, int):
        layers = [layers]
    layer_ids = sorted({layout.check_layer(int(l)) for l in layers})
    data = _batches(batches)
    gens = {l: torch.Generator().manual_seed(seed * 1_000_003 + l) for l in layer_ids}
    blocks: dict[int, list[dict]] = {l: [] for l in layer_ids}
    seconds = {l: 0.0 for l in layer_ids}
    total_targets = 0
    stream = hessian_blocks(model, layout, objective, data, layer_ids)
    with contextlib.closing(stream):
        while True:
            t0 = time.perf_counter()
            item = next(stream, None)
            if item is None:
                break
            bi, n_t, ops = item
            shared = (time.perf_counter() - t0) / len(ops)  # this batch's forward and backward
            total_targets += n_t
            for l, op in ops.items():
                if n_t == 0 or op.n == 0:  # no target, or nothing reaches one: a zero block
                    continue
                t1 = time.perf_counter()
                spec = _block_spectrum(op, gens[l], iters=iters, steps=lanczos_steps, probes=probes, tol=tol)
                spec.update(n=op.n, n_targets=n_t, hvps=op.calls, batch=bi)
                blocks[l].append(spec)
                seconds[l] += shared + time.perf_counter() - t1
    if total_targets == 0 or not all(blocks.values()):
        raise HeadgameError("the batches hold no prediction target (every sequence is shorter than 2 real tokens); "
                            "pass batches of real text")
    return {l: _combine(blocks[l], total_targets, seconds[l], len(data)) for l in layer_ids}


def _combine(blocks: list[dict], total_targets: int, seconds: float, n_batches: int) -> dict[str, Any]:
    """Union of the blocks' spectra, in units of the mean loss per target."""
    s = 1.0 / total_targets
    n_all = sum(b["n"] for b in blocks)
    nodes, weights = [], []
    for b in blocks:
        for run in b["runs"]:
            nodes.append(run.values * s)
            weights.append(run.weights * (b["n"] / n_all) / len(b["runs"]))
    top = max(blocks, key=lambda b: b["L"])
    bottom = min(blocks, key=lambda b: b["lambda_min"])
    return {
        "L": top["L"] * s,
        "L_converged": all(b["L_converged"] for b in blocks),
        "L_iters": max(b["L_iters"] for b in blocks),
        "L_residual": top["L_residual"] * s,
        "L_lanczos": max(b["L_lanczos"] for b in blocks) * s,
        "lambda_min": bottom["lambda_min"] * s,
        "lambda_min_converged": all(b["lambda_min_converged"] for b in blocks),
        "lambda_min_iters": max(b["lambda_min_iters"] for b in blocks),
        "lambda_min_residual": bottom["lambda_min_residual"] * s,
        "alpha_q05": spectral_quantile(np.concatenate(nodes), np.concatenate(weights), QUANTILE),
        "n_variables": n_all,
        "n_targets": total_targets,
        "n_batches": n_batches,
        "hvps": sum(b["hvps"] for b in blocks),
        "seconds": seconds,
        "per_batch": [
            {"batch": b["batch"], "n_variables": b["n"], "n_targets": b["n_targets"],
             "L": b["L"] / b["n_targets"], "lambda_min": b["lambda_min"] / b["n_targets"],
             "L_iters": b["L_iters"], "L_converged": b["L_converged"], "lambda_min_iters": b["lambda_min_iters"],
             "lambda_min_converged": b["lambda_min_converged"], "hvps": b["hvps"]}
            for b in blocks
        ],
    }
