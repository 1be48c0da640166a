"""What a model costs: analytic and measured FLOPs, forward and generation throughput.

See docs/formulas.md#flops and #throughput.

* Analytic FLOPs (:func:`analytic_flops`) per architecture, from the model's actual
  projection shapes (so a pruned model is counted as it is), 2 FLOPs per multiply-add:
  Q/K/V/O projections, QKᵀ and AV over T keys per query (what a dense kernel computes, the
  causal mask notwithstanding), the MLP (``Family.mlp_matrices``: 3 for a gated MLP, 2 otherwise)
  and the LM head (``Family.lm_head_flops``; BERT: the MLM transform + decoder; a bare
  BertModel: its pooler on [CLS]). The per-family pieces live in ``models/families/``.
  Norms, softmax, activations, biases and embeddings are not counted.
* Measured FLOPs (:func:`measured_flops`) with ``torch.utils.flop_counter.FlopCounterMode`` on
  one 1 × T batch. In torch 2.13 the counter credits 0 FLOPs to scaled-dot-product attention
  on CPU, so the count runs with eager attention (QKᵀ and AV are then counted as matmuls).
  The attention-block share is read from the counter's per-module table.
* Throughput (:func:`forward_throughput`, :func:`generation_throughput`): in one process, each
  pruned model is timed right next to a run of the base model, every round, alternating which
  of the two goes first (:func:`paired_rounds`), after warm-up rounds. The speed-up is the median
  of those adjacent base runs over the model's median; on a shared machine, where the load
  changes over seconds, this compares like with like. ``torch.inference_mode``, same dtype and
  threads for all.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from headgame.models.device import model_device, synchronize
from headgame.models.layout import HeadLayout
from headgame.models.surgery import head_counts


def _text_config(model: nn.Module):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _dims(model: nn.Module, layout: HeadLayout) -> dict[str, int]:
    cfg = _text_config(model)
    d = layout.d_model
    vocab = int(getattr(cfg, "vocab_size"))
    ff = layout.family_def.ffn_width(cfg, d)
    return {"d": d, "ff": ff, "vocab": vocab, "dh": layout.head_dim}


def analytic_flops(model: nn.Module, layout: HeadLayout, seq_len: int) -> dict[str, Any]:
    """Analytic forward FLOPs of one sequence of ``seq_len`` tokens, by component (docs/formulas.md#flops)."""
    fam = layout.family_def
    dm = _dims(model, layout)
    d, ff, vocab, dh, t = dm["d"], dm["ff"], dm["vocab"], dm["dh"], seq_len
    comp = {"qkv_proj": 0, "o_proj": 0, "attn_scores": 0, "attn_values": 0, "mlp": 0, "lm_head": 0}
    for nq, nkv in head_counts(model, layout):
        comp["qkv_proj"] += 2 * t * d * (nq + 2 * nkv) * dh
        comp["o_proj"] += 2 * t * nq * dh * d
        comp["attn_scores"] += 2 * t * t * nq * dh  # QKᵀ: T keys for each of T queries
        comp["attn_values"] += 2 * t * t * nq * dh  # AV
        comp["mlp"] += 2 * t * d * ff * fam.mlp_matrices
    kind = fam.head_kind(model)
    comp["lm_head"] = fam.lm_head_flops(model, kind, t, d, vocab)
    attention = comp["qkv_proj"] + comp["o_proj"] + comp["attn_scores"] + comp["attn_values"]
    total = sum(comp.values())
    return {
        "seq_len": t, "total": total, "attention": attention, "per_token": total / t,
        "components": comp, "head": kind,
        "heads": [nq for nq, _ in head_counts(model, layout)],
        "kv_heads": [nkv for _, nkv in head_counts(model, layout)],
    }


def step_flops(model: nn.Module, layout: HeadLayout, seq_len: int, *, batch_size: int = 1,
               grad_to_layer: int | None = None) -> dict[str, Any]:
    """Analytic FLOPs of one training step (forward + backward) on ``batch_size`` x ``seq_len``
    tokens, for the parameters of ``model`` that require grad (docs/formulas.md#flops counts).

    * forward: :func:`analytic_flops` of each sequence, plus 2 FLOPs per multiply-add of every
      trainable ``lora_A``/``lora_B`` matrix (adapters are not in the base count);
    * backward, input gradients: each layer at or above the lowest layer that needs them costs
      its forward FLOPs again (dL/dx = g·Wᵀ has the size of the forward product), and the LM head
      once; the lowest layer is the lowest block holding a trainable parameter, or
      ``grad_to_layer`` when given (analyze's activation-only pass: 0, every layer), and a
      trainable input embedding means every layer;
    * backward, weight gradients: 2·T·(in·out) for each trainable matrix of a linear layer
      (dW = gᵀx), 0 for a frozen one; embeddings (a scatter-add) and vectors (norms, biases) are
      not counted. For LoRA this term is tiny; for analyze (nothing trainable) it is 0.

    So a full fine-tune is ≈ 3x the forward, LoRA ≈ 2x, analyze's gradient pass 2x.
    Returns ``{"forward", "backward_input", "backward_weight", "total", "tokens",
    "lowest_grad_layer", "trainable_matrices", "method"}``; all FLOPs are for the whole batch."""
    fam = layout.family_def
    dm = _dims(model, layout)
    d, ff, vocab, dh, t = dm["d"], dm["ff"], dm["vocab"], dm["dh"], seq_len
    per_layer = [2 * t * d * (nq + 2 * nkv) * dh + 2 * t * nq * dh * d + 4 * t * t * nq * dh + 2 * t * d * ff * fam.mlp_matrices
                 for nq, nkv in head_counts(model, layout)]
    head = fam.lm_head_flops(model, fam.head_kind(model), t, d, vocab)
    blocks = layout.blocks(model)
    block_of = {id(p): i for i, b in enumerate(blocks) for p in b.parameters()}
    lowest, adapter, weight, n_mats = grad_to_layer, 0, 0, 0
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    emb_ids = {id(p) for p in emb.parameters()} if emb is not None else set()
    head_mod = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_ids = {id(p) for p in head_mod.parameters()} if head_mod is not None else set()
    for name, p in model.named_parameters():  # a tied LM head / embedding is one parameter, listed once
        if not p.requires_grad:
            continue
        if id(p) in emb_ids:
            lowest = 0
            if id(p) not in head_ids:  # an input embedding's gradient is a scatter-add: no FLOPs counted
                continue
        layer = block_of.get(id(p))
        if layer is not None:
            lowest = layer if lowest is None else min(lowest, layer)
        if p.dim() == 2:
            n_mats += 1
            weight += 2 * t * p.numel()
            if "lora_A" in name or "lora_B" in name:
                adapter += 2 * t * p.numel()
    forward = sum(per_layer) + head + adapter
    if lowest is None:  # nothing trainable and no activation gradients asked for: a forward only
        backward_input = 0
    else:
        backward_input = sum(per_layer[lowest:]) + head + adapter
    b = int(batch_size)
    out = {"forward": b * forward, "backward_input": b * backward_input, "backward_weight": b * weight}
    out.update(total=sum(out.values()), tokens=b * t, lowest_grad_layer=lowest, trainable_matrices=n_mats,
               method="analytic (docs/formulas.md#flops): forward + input gradients from the loss down to the lowest "
                      "layer needing them (its forward FLOPs again) + 2·T·in·out per trainable matrix")
    return out


def _attention_modules(model: nn.Module, layout: HeadLayout) -> list[str]:
    root = type(model).__name__
    names = []
    for l in range(layout.n_layers):
        prefix = f"{root}.{layout.layer_path}.{l}"
        names.append(f"{prefix}.{layout.attn_path}")
        if not layout.o_proj_path.startswith(layout.attn_path + "."):
            names.append(f"{prefix}.{layout.o_proj_path}")
    return names


@torch.no_grad()
def measured_flops(model: nn.Module, layout: HeadLayout, seq_len: int, *, vocab_size: int | None = None) -> dict[str, Any]:
    """FLOPs counted by FlopCounterMode for one 1 × ``seq_len`` forward, with eager attention."""
    from torch.utils.flop_counter import FlopCounterMode

    from headgame.models.tap import eager_attention

    vocab = vocab_size or int(_text_config(model).vocab_size)
    ids = torch.randint(0, vocab, (1, seq_len), generator=(g := torch.Generator().manual_seed(0)), device=g.device).to(model_device(model))
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if layout.causal:
        kwargs["use_cache"] = False
    with eager_attention(model), FlopCounterMode(display=False) as counter:
        model(**kwargs)
    table = counter.get_flop_counts()
    attention = sum(sum(table.get(name, {}).values()) for name in _attention_modules(model, layout))
    return {"seq_len": seq_len, "total": int(counter.get_total_flops()), "attention": int(attention),
            "method": "torch.utils.flop_counter.FlopCounterMode, eager attention (SDPA counts 0 on CPU in torch 2.13)"}


def reduction(base: float, pruned: float) -> float:
    """Relative reduction 1 − pruned/base."""
    return 1.0 - pruned / base if base else float("nan")


# --------------------------------------------------------------------------- throughput


def _forward_kwargs(layout: HeadLayout, ids: torch.Tensor) -> dict[str, Any]:
    kw: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if layout.causal:
        kw["use_cache"] = False
    return kw


def round_robin(fns: Mapping[str, Any], *, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Time every callable once per round, rotating the start; returns seconds of the timed rounds."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    return times


def paired_rounds(base: Any, others: Mapping[str, Any], *, warmup: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Time each callable right next to a run of ``base``, every round, alternating which goes first.

    On a shared machine the load changes over seconds; a pruned model is compared with the base
    run adjacent to it, so both see the same conditions. Returns ``{name: {"base": [...],
    "model": [...]}}`` for the timed rounds.
    """
    out = {n: {"base": [], "model": []} for n in others}
    for r in range(warmup + repeats):
        for i, (name, fn) in enumerate(others.items()):
            pair = [("base", base), ("model", fn)]
            if (r + i) % 2:
                pair.reverse()
            for role, f in pair:
                t0 = time.perf_counter()
                f()
                dt = time.perf_counter() - t0
                if r >= warmup:
                    out[name][role].append(dt)
    return out


def _paired_summary(timed: dict[str, dict[str, list[float]]], work: float, unit: str) -> dict[str, dict[str, Any]]:
    """Medians, ``unit``/s and speed-ups from :func:`paired_rounds`; the base row pools all its runs."""
    base_all = [t for v in timed.values() for t in v["base"]]
    med = statistics.median(base_all)
    res: dict[str, dict[str, Any]] = {"base": {"median_s": med, unit: work / med, "times_s": base_all, "measured_speedup": 1.0}}
    for name, v in timed.items():
        m, b = statistics.median(v["model"]), statistics.median(v["base"])
        res[name] = {
            "median_s": m, unit: work / m, "times_s": v["model"],
            "base_median_s": b, "base_times_s": v["base"],
            "measured_speedup": b / m,  # median of the adjacent base runs / median of this model's runs
            "paired_ratio_median": statistics.median(x / y for x, y in zip(v["base"], v["model"])),
        }
    return res


def forward_throughput(
    models: Mapping[str, nn.Module],
    layout: HeadLayout,
    *,
    batch_size: int = 8,
    seq_len: int = 256,
    warmup: int = 1,
    repeats: int = 5,
    vocab_size: int,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Forward-pass timing (docs/formulas.md#throughput): every model on the same random batch, paired with ``models["base"]``."""
    # drawn on the CPU (the same batch on every device), then moved to the models' device
    dev = model_device(models["base"])
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=(g := torch.Generator().manual_seed(seed)), device=g.device).to(dev)
    kw = _forward_kwargs(layout, ids)

    def runner(m: nn.Module):
        def run() -> None:
            with torch.inference_mode():
                m(**kw)
            synchronize(dev)  # a GPU clock stops when the work is done, not when it is queued
        return run

    others = {n: runner(m) for n, m in models.items() if n != "base"}
    timed = paired_rounds(runner(models["base"]), others, warmup=warmup, repeats=repeats)
    res = _paired_summary(timed, batch_size * seq_len, "tokens_per_s")
    for v in res.values():
        v["batch"] = [batch_size, seq_len]
    return res


def generation_throughput(
    models: Mapping[str, nn.Module],
    tokenizer: Any,
    *,
    prompt_len: int = 128,
    new_tokens: int = 128,
    warmup: int = 1,
    repeats: int = 3,
    vocab_size: int,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Greedy generation of ``new_tokens`` after a ``prompt_len`` prompt, paired with ``models["base"]``; tokens/s."""
    dev = model_device(models["base"])
    ids = torch.randint(0, vocab_size, (1, prompt_len), generator=(g := torch.Generator().manual_seed(seed)), device=g.device).to(dev)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)

    def runner(m: nn.Module):
        def run() -> None:
            with torch.inference_mode():
                m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
            synchronize(dev)
        return run

    others = {n: runner(m) for n, m in models.items() if n != "base"}
    timed = paired_rounds(runner(models["base"]), others, warmup=warmup, repeats=repeats)
    res = _paired_summary(timed, new_tokens, "tokens_per_s")
    for v in res.values():
        v.update(prompt_len=prompt_len, new_tokens=new_tokens)
    return res
