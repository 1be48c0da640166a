"""``headgame analyze``: the head interaction matrix G of every layer of a real model.

Pipeline (plain functions, DESIGN.md): load the model → pack the corpus into blocks → for each
batch, one forward and one activation-only backward with a :class:`HeadTap` feeding streaming
accumulators (gradient Gram for ρ, output moments for the redundancy statistics) → per layer
ω, ρ, G = ω ⊙ ρ, Γ variants, L_LDB, coalitions, Mann–Whitney, redundancy → JSON + report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headgame.analyze.collect import CouplingCollector, summarise
from headgame.analyze.config import AnalyzeConfig
from headgame.errors import HeadgameError
from headgame.io import load_state, save_state, write_json_atomic, write_text_atomic
from headgame.models.objective import Objective
from headgame.runs import check_identity, check_writable, progress_bar, provenance

STATE_FILE = ".analyze-state.safetensors"
LEGACY_STATE_FILE = ".analyze-state.pt"  # pickle, written before 0.2: never loaded


def _save_state(out: Path, cfg: AnalyzeConfig, model_hash: str, collector: CouplingCollector) -> None:
    save_state(out / STATE_FILE, {"config": cfg.run_identity(), "model_hash": model_hash, "collector": collector.state_dict()})


def _load_state(out: Path, cfg: AnalyzeConfig, model_hash: str) -> dict[str, Any] | None:
    if (out / LEGACY_STATE_FILE).exists():
        raise HeadgameError(
            f"{out / LEGACY_STATE_FILE} is a pickled run state, which headgame no longer loads (unpickling can run "
            "arbitrary code); delete it and start the run over without --resume"
        )
    path = out / STATE_FILE
    if not path.exists():
        return None
    state = load_state(path)
    check_identity(state["config"], cfg.run_identity(), where=path, saved_hash=state.get("model_hash"), current_hash=model_hash)
    return state["collector"]


def run_analysis(
    cfg: AnalyzeConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    report: bool = True,
    console: Any = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``headgame analyze`` end to end; returns the analysis dict also written to JSON."""
    from headgame.data import iter_batches, load_blocks
    from headgame.models.load import load_model

    out = Path(cfg.out)
    check_writable(out)
    t_start = time.perf_counter()
    loaded = load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if cfg.adapter:
        from headgame.models.adapters import attach_adapter

        loaded = attach_adapter(loaded, cfg.adapter, merge=cfg.merge_adapter)
    model, tok, layout = loaded
    if layout.max_positions and cfg.seq_len > layout.max_positions:
        raise HeadgameError(
            f"--seq-len {cfg.seq_len} exceeds the model's maximum of {layout.max_positions} positions; "
            f"use --seq-len {layout.max_positions} or less"
        )
    layers = layout.parse_layers(cfg.layers)
    blocks = load_blocks(cfg.data, tok, seq_len=cfg.seq_len, max_tokens=cfg.max_tokens, text_field=cfg.text_field,
                         data_dir=cfg.data_dir, encoder=not layout.causal)
    objective = Objective(model, layout, tok, seed=cfg.seed)
    n_batches = math.ceil(blocks.input_ids.shape[0] / cfg.batch_size)
    collector = CouplingCollector(model, layout, objective, layers, redundancy=cfg.redundancy)
    model_hash = loaded.info["hash"]
    start_batch = 0
    if resume:
        state = _load_state(out, cfg, model_hash)
        if state is not None:
            collector.load_state_dict(state)
            start_batch = collector.n_batches

    bar = progress_bar(progress, console, fields="batches · {task.fields[tps]:.0f} tok/s · mean Γ {task.fields[gamma]:.3f}")
    t_loop = time.perf_counter()
    with collector, bar:
        task = bar.add_task("analyze", total=n_batches, completed=start_batch, gamma=float("nan"), tps=0.0)
        for i, (ids, mask) in enumerate(iter_batches(blocks, cfg.batch_size)):
            if i < start_batch:
                continue
            full = bool(mask.all())
            collector.step(ids, None if (full and layout.causal) else mask)
            done_tokens = int(blocks.attention_mask[: (i + 1) * cfg.batch_size].sum())
            skipped = int(blocks.attention_mask[: start_batch * cfg.batch_size].sum())
            tps = (done_tokens - skipped) / max(time.perf_counter() - t_loop, 1e-9)
            bar.update(task, advance=1, gamma=collector.running_gamma(), tps=tps)
            if cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0 and i + 1 < n_batches:
                _save_state(out, cfg, model_hash, collector)
            if on_batch is not None:
                on_batch(i)
    loop_seconds = time.perf_counter() - t_loop

    layer_results = collector.layer_results(seed=cfg.seed)
    analysis: dict[str, Any] = {
        **provenance(cfg),
        "model": {"spec": cfg.model, **layout.describe(), "objective": objective.name,
                  "hash": model_hash, "source": loaded.info.get("source"),
                  **({"adapter": cfg.adapter, "adapter_hash": loaded.info.get("adapter_hash"),
                      "adapter_merged": cfg.merge_adapter} if cfg.adapter else {})},
        "data": {"source": cfg.data, "n_blocks": int(blocks.input_ids.shape[0]), "n_tokens": blocks.n_tokens,
                 "seq_len": cfg.seq_len, "n_documents": blocks.n_documents,
                 "mean_loss": collector.loss_sum / max(collector.n_targets, 1)},
        "timing": {"seconds": round(time.perf_counter() - t_start, 2), "loop_seconds": round(loop_seconds, 2),
                   "tokens_per_s": round(blocks.n_tokens / max(loop_seconds, 1e-9), 1) if start_batch == 0 else None},
        "layers": layer_results,
        "summary": summarise(layer_results),
        "notes": {
            "G": "G = omega ⊙ rho (docs/formulas.md#G); omega = cosine of W_O slices, rho = cosine of exact per-head CE gradients",
            "poa_proxy": "1/(1 - c·Γ²) with c = 1/(H(H-1)): a proxy, not the paper's bound (docs/formulas.md#poa-proxy)",
        },
    }
    write_json_atomic(out / "analysis.json", analysis)
    write_text_atomic(out / "config.yaml", cfg.to_yaml())
    if report:
        from headgame.report import write_report

        heat = layout.parse_layers(cfg.heatmap_layers) if cfg.heatmap_layers else None
        paths = write_report(analysis, out, heatmap_layers=heat)
        analysis["summary"]["files"] = sorted(p.name for p in paths.values())
    (out / STATE_FILE).unlink(missing_ok=True)
    (out / LEGACY_STATE_FILE).unlink(missing_ok=True)
    return analysis
