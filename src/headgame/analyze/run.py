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
from headgame.analyze.config import DEFAULT_SEQ_LEN, AnalyzeConfig
from headgame.config import check_out_path, with_values
from headgame.dist import finish, shard, world
from headgame.errors import HeadgameError
from headgame.io import read_analysis, write_json_atomic, write_text_atomic
from headgame.models.objective import Objective
from headgame.outdir import claims_out, note, nothing_to_resume
from headgame.report.html import REPORT_FILES
from headgame.runs import StateFile, announce_resume, check_identity, progress_bar, provenance

STATE_FILE = ".analyze-state.safetensors"
LEGACY_STATE_FILE = ".analyze-state.pt"  # pickle, written before 0.2: never loaded
ARTEFACTS = ("analysis.json", "config.yaml", *REPORT_FILES, STATE_FILE, LEGACY_STATE_FILE)
"""What ``headgame analyze`` writes into --out (the main result first); a fresh run clears them."""


def _save_state(out: Path, cfg: AnalyzeConfig, model_hash: str, collector: CouplingCollector) -> None:
    StateFile(out / STATE_FILE, cfg, model_hash).save({"collector": collector.state_dict()})


def _load_state(out: Path, cfg: AnalyzeConfig, model_hash: str) -> dict[str, Any] | None:
    if (out / LEGACY_STATE_FILE).exists():
        raise HeadgameError(
            f"{out / LEGACY_STATE_FILE} is a pickled run state, which headgame no longer loads (unpickling can run "
            "arbitrary code); delete it and start the run over without --resume"
        )
    path = out / STATE_FILE
    if not path.exists():
        if not (out / "analysis.json").exists():
            raise nothing_to_resume(out)
        done = read_analysis(out / "analysis.json")  # a finished run: nothing is left to compute
        saved = {k: v for k, v in done.get("config", {}).items() if k not in cfg.NOT_IDENTITY}
        check_identity(saved, cfg.run_identity(), where=out / "analysis.json",
                       saved_hash=done.get("model", {}).get("hash"), current_hash=model_hash)
        return None
    return StateFile(path, cfg, model_hash).load()["collector"]


def _recorded_base(info: dict[str, Any]) -> dict[str, Any]:
    """``{"base": {spec, hash}}`` for a merged model that records the base it was trained from."""
    from headgame.models.identity import base_of

    base = base_of(info)
    return {"base": base} if base is not None else {}


def run_analysis(
    cfg: AnalyzeConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    report: bool = True,
    console: Any = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``headgame analyze`` end to end; returns the analysis dict also written to JSON.

    Every input is checked first (:func:`prepare` loads the model and writes nothing); only then
    is --out claimed (``claims_out`` decorates :func:`_analyze`), so a bad input leaves no trace."""
    t_start = time.perf_counter()
    if world()[1] > 1 and resume:
        raise HeadgameError("--resume continues a run of one process; rerun it without a launcher, or start over without --resume")
    cfg, loaded, layers, heat = prepare(cfg)
    analysis = _analyze(cfg, loaded, layers, heat, t_start, resume=resume, progress=progress, report=report,
                        console=console, on_batch=on_batch)
    finish()  # several processes: all of them are done before any exits
    return analysis


def prepare(cfg: AnalyzeConfig) -> tuple[AnalyzeConfig, Any, list[int], list[int] | None]:
    """Check every input of a run against the files and the model, writing nothing: the config with
    --seq-len fitted to the model, the loaded model, the layers and the heatmap layers (or None)."""
    from headgame.data import check_source
    from headgame.models.layout import fit_seq_len
    from headgame.config import resolve_device
    from headgame.models.device import place
    from headgame.models.load import load_model

    check_out_path(cfg.out)
    resolve_device(cfg.device)  # a GPU asked for and absent fails before the model loads
    check_source(cfg.data, text_field=cfg.text_field, data_dir=cfg.data_dir)
    loaded = load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if cfg.adapter:
        from headgame.models.adapters import attach_adapter

        loaded = attach_adapter(loaded, cfg.adapter, merge=cfg.merge_adapter)
    place(loaded, resolve_device(cfg.device))
    layout = loaded.layout
    seq_len, fitted = fit_seq_len(cfg.seq_len, DEFAULT_SEQ_LEN, layout.max_positions)
    layers = layout.parse_layers(cfg.layers)
    heat = layout.parse_layers(cfg.heatmap_layers, "--heatmap-layers") if cfg.heatmap_layers is not None else None
    missing = sorted(set(heat or ()) - set(layers))
    if missing:
        raise HeadgameError(f"--heatmap-layers {','.join(map(str, missing))} are not among the analysed --layers {cfg.layers}; "
                            "draw analysed layers, or add them to --layers")
    if fitted:
        note(fitted)
    return with_values(cfg, seq_len=seq_len), loaded, layers, heat


run_analysis.artefacts = ARTEFACTS  # type: ignore[attr-defined]


@claims_out("analyze", ARTEFACTS, state=(STATE_FILE, LEGACY_STATE_FILE, "analysis.json"))
def _analyze(cfg: AnalyzeConfig, loaded: Any, layers: list[int], heat: list[int] | None, t_start: float, *,
             resume: bool = False, progress: bool = True, report: bool = True, console: Any = None,
             on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    from headgame.data import iter_batches, load_blocks

    out = Path(cfg.out)
    model, tok, layout = loaded
    blocks = load_blocks(cfg.data, tok, seq_len=cfg.seq_len, max_tokens=cfg.max_tokens, text_field=cfg.text_field,
                         data_dir=cfg.data_dir, encoder=not layout.causal)
    objective = Objective(model, layout, tok, seed=cfg.seed)
    n_batches = math.ceil(blocks.input_ids.shape[0] / cfg.batch_size)
    rank, n_proc = world()
    mine = shard(n_batches, rank, n_proc)  # this process's batches; the accumulators are summed after the loop
    collector = CouplingCollector(model, layout, objective, layers, redundancy=cfg.redundancy)
    model_hash = loaded.info["hash"]
    start_batch = 0
    if resume:
        state = _load_state(out, cfg, model_hash)
        if state is None:
            note(f"the analyze run in {out} is complete; nothing to resume")
            return read_analysis(out / "analysis.json")
        collector.load_state_dict(state)
        start_batch = collector.n_batches
        announce_resume("batch", start_batch, n_batches)

    bar = progress_bar(progress and rank == 0, console, fields="batches · {task.fields[tps]:.0f} tok/s · mean Γ {task.fields[gamma]:.3f}")
    t_loop = time.perf_counter()
    skipped = int(blocks.attention_mask[: start_batch * cfg.batch_size].sum())  # tokens of the batches resumed past
    with collector, bar:
        task = bar.add_task("analyze", total=len(mine), completed=start_batch, gamma=float("nan"), tps=0.0)
        for i, (ids, mask) in enumerate(iter_batches(blocks, cfg.batch_size)):
            if i < start_batch or i not in mine:
                if n_proc > 1 and i < mine.start:
                    objective.skip(ids)  # the masks of the batches before this shard, as one process draws them
                continue
            full = bool(mask.all())
            collector.step(ids, None if (full and layout.causal) else mask)
            done_tokens = int(blocks.attention_mask[mine.start * cfg.batch_size: (i + 1) * cfg.batch_size].sum())
            tps = (done_tokens - skipped) / max(time.perf_counter() - t_loop, 1e-9)
            bar.update(task, advance=1, gamma=collector.running_gamma(), tps=tps)
            if n_proc == 1 and cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0 and i + 1 < n_batches:
                _save_state(out, cfg, model_hash, collector)
            if on_batch is not None:
                on_batch(i)
    loop_seconds = time.perf_counter() - t_loop
    collector.gather()

    layer_results = collector.layer_results(seed=cfg.seed)
    analysis: dict[str, Any] = {
        **provenance(cfg),
        "model": {"spec": cfg.model, **layout.describe(), "objective": objective.name,
                  "hash": model_hash, "source": loaded.info.get("source"), **_recorded_base(loaded.info),
                  **({"adapter": cfg.adapter, "adapter_hash": loaded.info.get("adapter_hash"),
                      "adapter_merged": cfg.merge_adapter} if cfg.adapter else {})},
        "data": {"source": cfg.data, "n_blocks": int(blocks.input_ids.shape[0]), "n_tokens": blocks.n_tokens,
                 "seq_len": cfg.seq_len, "n_documents": blocks.n_documents,
                 "mean_loss": collector.loss_sum / max(collector.n_targets, 1)},
        "timing": {"seconds": round(time.perf_counter() - t_start, 2), "loop_seconds": round(loop_seconds, 2),
                   "tokens_per_s": round((blocks.n_tokens - skipped) / max(loop_seconds, 1e-9), 1),
                   **({"resumed_at_batch": start_batch} if start_batch else {})},
        "layers": layer_results,
        "summary": summarise(layer_results),
        "notes": {
            "G": "G = omega ⊙ rho (docs/formulas.md#G); omega = cosine of W_O slices, rho = cosine of exact per-head CE gradients",
            "poa_proxy": "1/(1 - c·Γ²) with c = 1/(H(H-1)): a proxy, not the paper's bound (docs/formulas.md#poa-proxy)",
        },
    }
    if rank != 0:  # only rank 0 writes (headgame.dist)
        return analysis
    write_json_atomic(out / "analysis.json", analysis)
    write_text_atomic(out / "config.yaml", cfg.to_yaml())
    if report:
        from headgame.report import write_report

        paths = write_report(analysis, out, heatmap_layers=heat)
        analysis["summary"]["files"] = sorted(p.name for p in paths.values())
    (out / STATE_FILE).unlink(missing_ok=True)
    (out / LEGACY_STATE_FILE).unlink(missing_ok=True)
    return analysis
