"""``headgame fep``: GT-FEP dividends and head scores of a real model (docs/formulas.md).

Pipeline (plain functions): load the model → token sequences (GSM8K problems or packed text)
→ argmax-key symbols of every head through HeadTap (§3.1) → per layer entropies, dividends,
summaries, scores, Gibbs/MCMC (§3.2–§3.7) → ε-Nash report with the ablation Spearman check
(§3.8) → dividends table, per-layer summary, head scores, JSON, PNGs and an HTML section.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headgame.data.texts import load_sequences, prefix, resolve_source
from headgame.dist import finish, merge_indexed, my_share, world
from headgame.errors import HeadgameError
from headgame.outdir import claims_out, note
from headgame.runs import progress_bar, provenance
from headgame.fep.config import FepConfig
from headgame.fep.progress import negative_share, step_rate, token_rate
from headgame.fep.state import STATE_FILE, FepState
from headgame.info import dividends as dv
from headgame.info.analysis import InfoOptions, LayerInfo, analyse_layer
from headgame.info.scores import epsilon_nash, spearman
from headgame.measure.select import select_heads
from headgame.measure.symbols import HeadSymbols

INFO_SCORES = ("fep", "fep-exact", "shapley", "gibbs")


def analyse_symbols(symbols: HeadSymbols, opts: InfoOptions, on_layer: Callable[[int], None] | None = None) -> dict[int, LayerInfo]:
    infos = {}
    for layer in symbols.layers:
        infos[layer] = analyse_layer(layer, symbols.x[layer], symbols.seq, symbols.alphabet_size, opts)
        if on_layer is not None:
            on_layer(layer)
    return infos


def pooled_summary(infos: dict[int, LayerInfo]) -> dict[str, Any]:
    """Model-level view of the triple dividends: the paper's claim is that most are negative in every layer."""
    allv = np.concatenate([i.triples for i in infos.values()]) if infos else np.zeros(0)
    pooled = dv.summarise_triples(allv).to_dict()
    layers_ok = [l for l, i in infos.items() if i.summary.n and i.summary.frac_negative > 0.5 and i.summary.median < 0]
    pairs = np.concatenate([i.pairs for i in infos.values()]) if infos else np.zeros(0)
    return {
        "triples": pooled,
        "layers_majority_negative_and_median_below_0": len(layers_ok),
        "n_layers": len(infos),
        "frac_negative_by_layer": {str(l): i.summary.frac_negative for l, i in infos.items()},
        "pairs_min_bits": float(pairs.min()) if pairs.size else math.nan,
        "pairs_all_nonnegative": bool((pairs >= -1e-9).all()) if pairs.size else True,
    }


def saturation(infos: dict[int, LayerInfo], n_obs: int) -> list[str]:
    worst: dict[int, float] = {}
    for info in infos.values():
        orders = dict(info.max_entropy_by_order)
        orders[info.n_heads] = info.h_full  # the full coalition, behind fep-exact
        for k, h in orders.items():
            worst[k] = max(worst.get(k, 0.0), h)
    return dv.saturation_warnings(worst, n_obs)


def score_matrix(infos: dict[int, LayerInfo], name: str, n_layers: int) -> np.ndarray | None:
    if not infos or any(name not in i.scores for i in infos.values()):
        return None
    out = np.full((n_layers, next(iter(infos.values())).n_heads), np.nan)
    for l, i in infos.items():
        out[l] = i.scores[name]
    return out


def ablation_cost(layout: Any, seqs: Any, budget: int, s_per_token: float) -> str:
    """What the ablation check will cost, said before it runs: a forward pass over its sequences
    per head plus one unablated, timed at the speed of this run's discretisation pass."""
    passes = layout.n_layers * layout.n_heads + 1
    est = passes * seqs.n_tokens * s_per_token
    when = f"about {est / 60:.1f} min" if est >= 90 else f"about {est:.0f} s"
    return (f"the ablation check runs {layout.n_layers} x {layout.n_heads} heads + 1 = {passes} forward passes over "
            f"{seqs.n_sequences} sequence(s), {seqs.n_tokens} tokens (--ablation-tokens {budget}): {when} at this run's "
            "speed; --ablation-tokens 0 skips it")


ARTEFACTS = ("fep.json", "config.yaml", "dividends.csv", "dividends.parquet", "layer_summary.csv", "head_scores.csv",
             "dividends_hist.png", "triples_by_layer.png", "coalitions.png", "report.html", STATE_FILE)
"""What ``headgame fep`` writes into --out (fep/report.py, the main result first); a fresh run clears them."""


def run_fep(cfg: FepConfig, *, resume: bool = False, progress: bool = True, console: Any = None, report: bool = True) -> dict[str, Any]:
    """Run ``headgame fep`` end to end; returns the result dict also written to ``fep.json``.

    ``resume`` continues the interrupted run in ``cfg.out`` from its last checkpoint (fep/state.py).
    Every input is checked first (:func:`prepare` loads the model and writes nothing); only then
    is --out claimed (``claims_out`` decorates :func:`_fep`), so a bad input leaves no trace.
    """
    t_start = time.perf_counter()
    if world()[1] > 1 and resume:
        raise HeadgameError("--resume continues a run of one process; rerun it without a launcher, or start over without --resume")
    cfg, loaded, layers, source = prepare(cfg)
    result = _fep(cfg, loaded, layers, source, t_start, resume=resume, progress=progress, console=console, report=report)
    finish()  # several processes: all of them are done before any exits
    return result


def prepare(cfg: FepConfig) -> tuple[FepConfig, Any, list[int], str]:
    """Check every input against the files and the model, writing nothing: the config with --seq-len
    fitted to the model, the loaded model, the layers and the text source ('auto' resolved)."""
    from headgame.config import DEFAULT_SEQ_LEN, check_out_path, resolve_device, with_values
    from headgame.models.device import place
    from headgame.data.texts import check_sequence_source
    from headgame.models.layout import fit_seq_len
    from headgame.models.load import load_model

    check_out_path(cfg.out)
    device = resolve_device(cfg.device)  # a GPU asked for and absent fails before the model loads
    source = resolve_source(cfg.data, cfg.data_dir)
    check_sequence_source(source, text_field=cfg.text_field, data_dir=cfg.data_dir)
    loaded = place(load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code), device)
    layout = loaded.layout
    if loaded.info.get("kind") == "pruned":
        raise HeadgameError(f"{cfg.model} is a pruned model; analyse the original model (the dividends need every head)")
    seq_len, fitted = fit_seq_len(cfg.seq_len, DEFAULT_SEQ_LEN, layout.max_positions)
    layers = layout.parse_layers(cfg.layers)
    if fitted:
        note(fitted)
    return with_values(cfg, seq_len=seq_len), loaded, layers, source


run_fep.artefacts = ARTEFACTS  # type: ignore[attr-defined]


@claims_out("fep", ARTEFACTS, state=(STATE_FILE,))
def _fep(cfg: FepConfig, loaded: Any, layers: list[int], source: str, t_start: float, *, resume: bool = False,
         progress: bool = True, console: Any = None, report: bool = True) -> dict[str, Any]:
    from headgame.fep.report import write_outputs

    out = Path(cfg.out)
    model, tok, layout = loaded
    seqs = load_sequences(source, tok, causal=layout.causal, max_tokens=cfg.max_tokens, seq_len=cfg.seq_len,
                          data_dir=cfg.data_dir, text_field=cfg.text_field, gsm8k_format=cfg.gsm8k_format, seed=cfg.seed)
    with_ablation = bool(cfg.ablation_budget) and layers == list(range(layout.n_layers))
    state = FepState(out, cfg, loaded.info.get("hash"))
    resumed_at = None
    if resume:
        state.restore()
        resumed_at = state.announce(math.ceil(seqs.n_sequences / cfg.batch_size), layers, layout.n_layers if with_ablation else 0)
    main, n_proc = state.rank == 0, state.n_proc
    bar = progress_bar(progress and main, console, fields="{task.fields[live]}")  # live figures: headgame.fep.progress
    timing: dict[str, float] = {}
    with bar:
        t0 = time.perf_counter()
        task = bar.add_task("discretise", total=seqs.n_sequences, live="")
        tok_s = token_rate(seqs.attention_mask, skip=state.batches_done * cfg.batch_size)
        symbols = state.collect(model, layout, seqs, layers, on_batch=lambda d, t: bar.update(task, completed=d, live=tok_s(d)))
        timing["discretise_s"] = time.perf_counter() - t0
        if symbols.n_obs < 2:
            raise HeadgameError(f"only {symbols.n_obs} observation(s); raise --max-tokens")
        t0 = time.perf_counter()
        task = bar.add_task("dividends", total=len(layers), live="")
        opts = InfoOptions(miller_madow=cfg.miller_madow, bootstrap=cfg.bootstrap, ci_method=cfg.ci_method, seed=cfg.seed, full_max_heads=cfg.full_max_heads,
                           beta=cfg.beta, mcmc_steps=cfg.mcmc_steps, mcmc_burn_in=cfg.mcmc_burn_in)
        infos = state.analyse(symbols, opts, on_layer=lambda l: bar.update(task, advance=1, live=negative_share(state.infos.values())))
        timing["dividends_s"] = time.perf_counter() - t0
        ablation = base_nll = None
        if with_ablation:
            from headgame.measure.importance import ablation_delta_nll

            t0 = time.perf_counter()
            task = bar.add_task("ablation", total=layout.n_layers * layout.n_heads, live="")
            heads_s = step_rate("heads")
            abl_seqs = prefix(seqs, cfg.ablation_budget)
            if main:
                note(ablation_cost(layout, abl_seqs, cfg.ablation_budget, timing["discretise_s"] / max(seqs.n_tokens, 1)))
            mine = my_share(layout.n_layers * layout.n_heads) if n_proc > 1 else None  # each process ablates a block of heads
            ablation, base_nll = ablation_delta_nll(model, layout, tok, abl_seqs, batch_size=cfg.batch_size, seed=cfg.seed,
                                                    on_step=lambda d, t: bar.update(task, completed=d, live=heads_s(d)),
                                                    done=state.ablation, on_layer=state.ablation_done, heads=mine)
            if mine is not None:
                shares = merge_indexed({i: float(ablation.flat[i]) for i in mine})
                ablation = np.array([shares[i] for i in range(ablation.size)], dtype=np.float64).reshape(ablation.shape)
            timing["ablation_s"] = time.perf_counter() - t0

    warnings = saturation(infos, symbols.n_obs)
    scores = {name: m for name in INFO_SCORES if (m := score_matrix(infos, name, layout.n_layers)) is not None}
    h1 = score_matrix(infos, "entropy", layout.n_layers)
    nash = None
    if layers == list(range(layout.n_layers)):
        pruned = select_heads(scores["fep"], cfg.fraction, per_layer=cfg.per_layer)
        nash = epsilon_nash(scores["fep"], pruned, h1).to_dict()
        nash["fraction"] = cfg.fraction
        nash["pruned_heads"] = {str(l): v for l, v in pruned.items()}
        if ablation is not None:
            rho = {}
            for name, m in scores.items():
                r, p = spearman(m, ablation)
                rho[name] = {"rho": r, "p": p}
            nash["spearman_vs_ablation"] = rho
            nash["spearman_rho"], nash["spearman_p"] = rho["fep"]["rho"], rho["fep"]["p"]
            nash["spearman_score"] = "fep"
            nash["ablation_tokens"] = int(prefix(seqs, cfg.ablation_budget).n_tokens)
            nash["base_nll"] = base_nll
    result: dict[str, Any] = {
        **provenance(cfg),
        "model": {"spec": cfg.model, **layout.describe(), "hash": loaded.info.get("hash"), "source": loaded.info.get("source")},
        "data": {"source": source, "n_sequences": seqs.n_sequences, "n_tokens": seqs.n_tokens, "n_observations": symbols.n_obs,
                 "seq_len": cfg.seq_len, "truncated": seqs.truncated, "alphabet": cfg.alphabet,
                 "alphabet_size": symbols.alphabet_size, "saturation_bits": math.log2(symbols.n_obs)},
        "layers": [infos[l].summary_dict() for l in layers],
        "summary": pooled_summary(infos),
        "epsilon_nash": nash,
        "warnings": warnings,
        "timing": {**{k: round(v, 2) for k, v in timing.items()}, "seconds": round(time.perf_counter() - t_start, 2),
                   **({"resumed_at": resumed_at} if resumed_at else {})},
        "notes": {
            "dividends": "D(S) = Σ_{T⊆S} (−1)^{|S|−|T|} F(T), F(S) = |S|·log2 K − H(X_S) (docs/formulas.md); pairs = MI ≥ 0, "
                         "triples = I(X;Y|Z) − I(X;Y): negative = redundancy",
            "wilcoxon": "one-sided signed-rank test of a layer's triple dividends against 0 (H1: median < 0); triples share heads, "
                        "so the p-value is descriptive",
            "bootstrap": f"{cfg.ci_method} intervals over sequences; a resample repeats sequences, which lowers plug-in "
                         "joint entropies and shifts every resampled quantity; the basic interval (2θ̂ − q_hi, 2θ̂ − q_lo) "
                         "corrects that shift; where the shift exceeds the resamples' spread neither interval contains the estimate "
                         "(the two lie on opposite sides of it)",
            "fep_score": "m_i^(≤3) truncates H(X_i | rest) at order 3 (docs/formulas.md); where a layer's pair and triple dividends are "
                         "large the truncation leaves [0, H_i] (it can be negative or exceed H_i), so ε and global rankings "
                         "across layers inherit that error; fep-exact is bounded but saturates",
            "orders": "dividends of order ≥ 4 come from joint entropies that saturate near log2(n): interpret them cautiously",
        },
    }
    if not main:  # only rank 0 writes (headgame.dist)
        return result
    head_scores = {"entropy": h1, **scores}
    if ablation is not None:
        head_scores["ablation"] = ablation
    paths = write_outputs(result, infos, head_scores, out, table_format=cfg.table_format, config_yaml=cfg.to_yaml(), report=report)
    result["files"] = sorted(p.name for p in paths)
    state.clear()
    return result
