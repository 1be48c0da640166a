"""``headgame prune``: rank heads, prune them physically, measure before and after.

Pipeline: load → perplexity sets (GSM8K, WikiText-2) → scoring text → head scores per criterion
(:mod:`headgame.prune.criteria`) → selection (:mod:`headgame.measure.select`) → pruned copies
that share every non-attention weight with the base model (:func:`surgery.pruned_copy`) →
perplexity, analytic and measured FLOPs, interleaved forward and generation throughput →
``pruning.json``, ``pruning_table.md``/``.csv``, ``head_scores.csv``, ``config.yaml`` and the
pruned model of the primary criterion in ``OUT/model``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headgame.errors import HeadgameError
from headgame.outdir import claims_out
from headgame.runs import progress_bar, provenance
from headgame.prune.config import PruneConfig
from headgame.prune.criteria import Criterion, ScoreContext, get_criterion
from headgame.prune.report import flat_metrics, write_prune_outputs
from headgame.prune.state import STATE_FILE, PruneState
from headgame.system import cpu_name


@dataclass
class Variant:
    """One pruned model: which criterion (and seed) chose its heads."""

    key: str  # "fep", "random#3"
    criterion: Criterion
    seed: int
    scores: np.ndarray  # [L, H]
    removed: dict[int, list[int]]
    model: Any = None
    record: Any = None
    results: dict[str, Any] = field(default_factory=dict)


def device_info(dtype: str, device: Any = "cpu") -> dict[str, Any]:
    """What the timings ran on: the device (with its GPU name), the CPU, its threads and the dtype."""
    dev = torch.device(device)
    gpu = {"gpu": torch.cuda.get_device_name(dev)} if dev.type == "cuda" else {}
    return {"device": str(dev), **gpu, "cpu": cpu_name(), "threads": torch.get_num_threads(), "dtype": dtype}


def build_evalsets(cfg: PruneConfig, tokenizer: Any, layout: Any, notes: dict[str, str]) -> list:
    """The perplexity sets asked for; a default set whose file is absent is skipped with a note."""
    from headgame.data.datadir import data_file
    from headgame.data.texts import GSM8K_TEST, WIKITEXT_TEST
    from headgame.measure.perplexity import gsm8k_set, wikitext_set

    budget = cfg.ppl_max_tokens or None
    sets = []
    for name in cfg.ppl_set_list:
        explicit = cfg.gsm8k_file if name == "gsm8k" else cfg.wikitext_file
        try:
            path = explicit or str(data_file(GSM8K_TEST if name == "gsm8k" else WIKITEXT_TEST, cfg.data_dir))
        except HeadgameError as exc:
            notes[f"perplexity_{name}"] = f"skipped: {exc}"
            continue
        if explicit and not Path(explicit).is_file():
            raise HeadgameError(f"--{'gsm8k' if name == 'gsm8k' else 'wikitext'}-file {explicit} not found; check the path")
        if name == "gsm8k":
            sets.append(gsm8k_set(tokenizer, path, fmt=cfg.gsm8k_format, max_len=cfg.ppl_max_len, max_tokens=budget))
        else:
            sets.append(wikitext_set(tokenizer, path, window=cfg.wikitext_window, max_tokens=budget, encoder=not layout.causal))
    return sets


def _rel(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or not old:
        return None
    return new / old - 1.0


def _mean_sd(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}


def fit_positions(cfg: PruneConfig, max_positions: int | None, notes: dict[str, str]) -> PruneConfig:
    """Lengths beyond the model's position limit are lowered to it (recorded in the notes)."""
    import dataclasses

    if not max_positions:
        return cfg
    changes = {}
    for name in ("seq_len", "ppl_max_len", "wikitext_window", "flops_seq_len", "throughput_seq_len"):
        if getattr(cfg, name) > max_positions:
            changes[name] = max_positions
    if cfg.gen_prompt + cfg.gen_new_tokens > max_positions:
        changes["gen_prompt"] = max(1, max_positions - cfg.gen_new_tokens)
        changes["gen_new_tokens"] = min(cfg.gen_new_tokens, max_positions - changes["gen_prompt"])
    if changes:
        notes["positions"] = f"lowered to fit the model's {max_positions} positions: " + ", ".join(f"{k}={v}" for k, v in changes.items())
    return dataclasses.replace(cfg, **changes) if changes else cfg


ARTEFACTS = ("pruning.json", "config.yaml", "pruning_table.md", "pruning_table.csv", "head_scores.csv", "model", STATE_FILE)
"""What ``headgame prune`` writes into --out (prune/report.py and the pruned model; the main result first)."""


def run_prune(cfg: PruneConfig, *, resume: bool = False, progress: bool = True, console: Any = None) -> dict[str, Any]:
    """Run ``headgame prune`` end to end; returns the dict written to ``pruning.json``.

    ``resume`` continues the interrupted run in ``cfg.out`` from its last checkpoint (prune/state.py).
    Every input is checked first (prune/checks.py loads the model and writes nothing); only then is
    --out claimed (``claims_out`` decorates :func:`_prune`), so a bad input leaves no trace.
    """
    from headgame.prune.checks import prepare

    t_start = time.perf_counter()
    loaded = prepare(cfg)
    return _prune(cfg, loaded, t_start, resume=resume, progress=progress, console=console)


run_prune.artefacts = ARTEFACTS  # type: ignore[attr-defined]


@claims_out("prune", ARTEFACTS, state=(STATE_FILE,))
def _prune(cfg: PruneConfig, loaded: Any, t_start: float, *, resume: bool = False, progress: bool = True,
           console: Any = None) -> dict[str, Any]:
    from headgame.data.texts import load_sequences, resolve_source
    from headgame.fep.run import analyse_symbols
    from headgame.info.analysis import InfoOptions
    from headgame.info.scores import epsilon_nash, spearman
    from headgame.measure.perplexity import perplexity
    from headgame.measure.select import select_heads
    from headgame.measure.symbols import collect_symbols
    from headgame.models.surgery import pruned_copy, save_pruned
    from headgame.prune import cost

    out = Path(cfg.out)
    timing: dict[str, float] = {}
    notes: dict[str, str] = {}
    model, tok, layout = loaded
    state = PruneState(out, cfg, loaded.info.get("hash"))  # the settings as asked, before fitting the positions
    cfg = fit_positions(cfg, layout.max_positions, notes)
    n_total = layout.n_layers * layout.n_heads
    crits = [get_criterion(n) for n in cfg.criteria_list()]
    vocab = int((model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config).vocab_size)

    evalsets = build_evalsets(cfg, tok, layout, notes)
    source = resolve_source(cfg.score_data, cfg.data_dir)
    needs_info = any(c.kind == "information" for c in crits)
    needs_loss = any(c.kind in ("performance", "attention", "coupling") for c in crits)
    load = dict(causal=layout.causal, seq_len=cfg.seq_len, data_dir=cfg.data_dir, text_field=cfg.text_field,
                gsm8k_format=cfg.gsm8k_format, seed=cfg.seed)
    score_seqs = load_sequences(source, tok, max_tokens=cfg.score_tokens, **load) if needs_info else None
    loss_seqs = load_sequences(source, tok, max_tokens=cfg.loss_tokens, **load) if needs_loss else None

    bar = progress_bar(progress, console, fields="{task.fields[live]}")
    tasks: dict[str, Any] = {}
    scoring = [""]  # the criterion being scored, named in the lines of its steps

    def step(name: str, done: int, total: int, *, label: str | None = None, live: str | None = None) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total, live="")
        label = label or (f"scoring {scoring[0]} · {name}" if scoring[0] else name)
        bar.update(tasks[name], completed=done, total=total, description=label, **({"live": live} if live is not None else {}))

    def info_provider() -> dict:
        t0 = time.perf_counter()
        symbols = collect_symbols(model, layout, score_seqs.input_ids, score_seqs.attention_mask, alphabet=cfg.alphabet,
                                  batch_size=cfg.batch_size, on_batch=lambda d, t: step("discretise", d, t))
        opts = InfoOptions(miller_madow=cfg.miller_madow, bootstrap=0, seed=cfg.seed, mcmc_steps=0)
        infos = analyse_symbols(symbols, opts, on_layer=lambda l: step("dividends", l + 1, layout.n_layers))
        timing["fep_analysis_s"] = time.perf_counter() - t0
        notes["fep_analysis"] = f"{symbols.n_obs} observations per layer from {score_seqs.n_sequences} sequences of {source}"
        return infos

    ctx = ScoreContext(model, tok, layout, info_provider=info_provider if needs_info else None, score_seqs=score_seqs,
                       loss_seqs=loss_seqs, batch_size=cfg.batch_size, seed=cfg.seed, analysis_path=cfg.analysis, progress=step)
    resumed_at = None
    if resume:
        state.restore(ctx.cache, notes)
        n_variants = sum(cfg.random_seeds if c.name == "random" else 1 for c in crits)
        resumed_at = state.announce(n_variants, len(evalsets))
    variants: list[Variant] = []
    with bar:
        # ---------------------------------------------------------- scores and pruned copies
        t0 = time.perf_counter()
        for crit in crits:
            seeds = [cfg.seed + i for i in range(cfg.random_seeds)] if crit.name == "random" else [cfg.seed]
            for s in seeds:
                ctx.seed = s
                key = crit.name if crit.name != "random" else f"random#{s}"
                scoring[0] = key
                if key not in state.scores:
                    state.scores[key] = crit.compute(ctx)
                    state.save(ctx.cache, notes)
                scores = state.scores[key]
                removed = select_heads(crit.pruning_key(scores), cfg.fraction, per_layer=cfg.per_layer,
                                       rounding=cfg.per_layer_rounding)
                variants.append(Variant(key, crit, s, scores, removed))
            ctx.seed = cfg.seed
        scoring[0] = ""
        timing["scoring_s"] = time.perf_counter() - t0
        for v in variants:
            v.model, v.record = pruned_copy(model, layout, v.removed)
        models = {"base": model, **{v.key: v.model for v in variants}}

        # ---------------------------------------------------------- perplexity
        t0 = time.perf_counter()
        ppl: dict[str, dict[str, Any]] = {name: dict(state.ppl.get(name, {})) for name in models}
        for es in evalsets:
            for i, (name, m) in enumerate(models.items()):
                step(f"perplexity {es.name}", i, len(models), label=f"measuring {name} · perplexity {es.name}")
                if es.name not in ppl[name]:
                    ppl[name][es.name] = perplexity(m, layout, tok, es, batch_size=cfg.batch_size, seeds=cfg.pseudo_ppl_seeds)
                    state.ppl = ppl
                    state.save(ctx.cache, notes)
                last = ppl[name][es.name].get("ppl")
                step(f"perplexity {es.name}", i + 1, len(models), label=f"perplexity {es.name}",
                     live=f"last: {name} {last:.3f}" if isinstance(last, (int, float)) else f"last: {name} —")
        timing["perplexity_s"] = time.perf_counter() - t0

        # ---------------------------------------------------------- FLOPs
        t0 = time.perf_counter()
        flops = dict(state.flops)
        for i, (name, m) in enumerate(models.items()):
            step("FLOPs", i, len(models), label=f"measuring {name} · FLOPs")
            if name not in flops:
                flops[name] = {"analytic": cost.analytic_flops(m, layout, cfg.flops_seq_len),
                               "measured": cost.measured_flops(m, layout, cfg.flops_seq_len, vocab_size=vocab),
                               "analytic_at_throughput_len": cost.analytic_flops(m, layout, cfg.throughput_seq_len)["total"]}
                state.flops = flops
                state.save(ctx.cache, notes)
            step("FLOPs", i + 1, len(models), label="FLOPs")
        timing["flops_s"] = time.perf_counter() - t0

        # ---------------------------------------------------------- throughput (paired with base)
        t0 = time.perf_counter()
        # one model per criterion (random: its first seed; every seed prunes the same number of heads)
        timed_models = {"base": model}
        for v in variants:
            if v.criterion.name != "random" or v.seed == cfg.seed:
                timed_models[v.key] = v.model
        step("forward throughput", 0, 1)
        fwd_models = {k: torch.compile(m) for k, m in timed_models.items()} if cfg.compile else timed_models
        fwd = cost.forward_throughput(fwd_models, layout, batch_size=cfg.throughput_batch, seq_len=cfg.throughput_seq_len,
                                      warmup=cfg.warmup, repeats=cfg.repeats, vocab_size=vocab, seed=cfg.seed)
        step("forward throughput", 1, 1)
        gen = None
        if cfg.generation and layout.causal:
            step("generation throughput", 0, 1)
            # a secondary metric: the primary criterion and random's first seed only, to bound the time
            gen_models = {k: m for k, m in timed_models.items() if k in ("base", crits[0].name, f"random#{cfg.seed}")}
            gen = cost.generation_throughput(gen_models, tok, prompt_len=cfg.gen_prompt, new_tokens=cfg.gen_new_tokens,
                                             repeats=cfg.gen_repeats, vocab_size=vocab, seed=cfg.seed)
            step("generation throughput", 1, 1)
        elif not layout.causal:
            notes["generation"] = "not measured: the model is an encoder (no autoregressive generation)"
        timing["throughput_s"] = time.perf_counter() - t0

    # ---------------------------------------------------------- assemble
    infos = ctx.cache.get("info")
    h1 = fep_m = None
    if infos is not None:
        h1 = np.stack([infos[l].scores["entropy"] for l in range(layout.n_layers)])
        fep_m = np.stack([infos[l].scores["fep"] for l in range(layout.n_layers)])
    ablation = ctx.cache.get("ablation")
    base_an, base_me = flops["base"]["analytic"], flops["base"]["measured"]

    def describe(name: str, v: Variant | None) -> dict[str, Any]:
        an, me = flops[name]["analytic"], flops[name]["measured"]
        res: dict[str, Any] = {
            "flops": {
                "analytic": {**an, "reduction_total": cost.reduction(base_an["total"], an["total"]),
                             "reduction_attention": cost.reduction(base_an["attention"], an["attention"])},
                "measured": {**me, "reduction_total": cost.reduction(base_me["total"], me["total"]),
                             "reduction_attention": cost.reduction(base_me["attention"], me["attention"])},
            },
            "perplexity": {},
            "throughput": {},
        }
        for es in evalsets:
            p = dict(ppl[name][es.name])
            if p.get("available") and name != "base" and ppl["base"][es.name].get("available"):
                b = ppl["base"][es.name]["ppl"]
                p["change_abs"], p["change_rel"] = p["ppl"] - b, _rel(p["ppl"], b)
            res["perplexity"][es.name] = p
        if name in fwd:
            f = dict(fwd[name])
            f["flop_implied_speedup"] = flops["base"]["analytic_at_throughput_len"] / flops[name]["analytic_at_throughput_len"]
            f["gain"] = f["measured_speedup"] - 1.0
            fi = f["flop_implied_speedup"] - 1.0
            f["efficiency"] = (f["measured_speedup"] - 1.0) / fi if fi > 1e-12 else None
            res["throughput"]["forward"] = f
        if gen is not None and name in gen:
            res["throughput"]["generation"] = dict(gen[name])
        if v is None:
            return res
        res.update({
            "criterion": v.criterion.name, "seed": v.seed, "n_pruned": sum(len(h) for h in v.removed.values()),
            "pruned_heads": {str(l): h for l, h in v.removed.items()},
            "heads_per_layer": v.record.heads_per_layer(),
            "kv_heads_per_layer": [len(v.record.kept_kv(l)) for l in range(layout.n_layers)],
            "kv_heads_removed": sum(layout.n_kv_heads - len(v.record.kept_kv(l)) for l in range(layout.n_layers))
            if layout.family_def.grouped_kv else None,
        })
        nash = epsilon_nash(fep_m, v.removed, h1).to_dict() if fep_m is not None else None
        if ablation is not None and v.criterion.name != "ablation":
            r, p = spearman(v.scores, ablation)
            res["spearman_vs_ablation"] = {"rho": r, "p": p}
            if nash is not None:
                nash.update(spearman_rho=r, spearman_p=p, spearman_score=v.criterion.name)
        if nash is not None:
            res["epsilon_nash"] = nash
        return res

    results: dict[str, Any] = {}
    for v in variants:
        v.results = describe(v.key, v)
    for crit in crits:
        group = [v for v in variants if v.criterion.name == crit.name]
        if crit.name == "random":
            runs = [v.results for v in group]
            keys = sorted({k for r in runs for k in flat_metrics(r)})
            results["random"] = {
                "criterion": "random", "seeds": [v.seed for v in group], "runs": runs,
                "summary": {k: _mean_sd([flat_metrics(r).get(k) for r in runs]) for k in keys},
            }
        else:
            results[crit.name] = group[0].results
    primary = crits[0].name
    saved = None
    if cfg.save_model:
        pv = next(v for v in variants if v.criterion.name == primary)
        saved = str(save_pruned(pv.model, tok, out / "model", extra={"criterion": primary, "fraction": cfg.fraction,
                                                                      "per_layer": cfg.per_layer, "source_model": cfg.model,
                                                                      "source_hash": loaded.info.get("hash")}))
    result: dict[str, Any] = {
        **provenance(cfg),
        "model": {"spec": cfg.model, **layout.describe(), "hash": loaded.info.get("hash"), "n_heads_total": n_total},
        "device": device_info(cfg.dtype, loaded.info.get("device", "cpu")),
        "budget": {"fraction": cfg.fraction, "per_layer": cfg.per_layer, "per_layer_rounding": cfg.per_layer_rounding,
                   "n_pruned": sum(len(h) for h in variants[0].removed.values())},
        "data": {"score_source": source, "score_tokens": None if score_seqs is None else score_seqs.n_tokens,
                 "loss_tokens": None if loss_seqs is None else loss_seqs.n_tokens,
                 "perplexity_sets": [es.describe() for es in evalsets]},
        "primary": primary,
        "base": describe("base", None),
        "results": results,
        "saved_model": saved,
        "timing": {**{k: round(v, 2) for k, v in timing.items()}, "seconds": round(time.perf_counter() - t_start, 2),
                   **({"resumed_at": resumed_at} if resumed_at else {})},
        "notes": {
            **notes,
            "flops": "analytic: 2 FLOPs per multiply-add of QKV/O projections, QKᵀ and AV (T keys per query), MLP and LM head, "
                     f"one sequence of {cfg.flops_seq_len} tokens; measured: FlopCounterMode on 1 x {cfg.flops_seq_len} with eager "
                     "attention (SDPA is counted as 0 FLOPs on CPU in torch 2.13)",
            "throughput": f"forward: batch {cfg.throughput_batch} x {cfg.throughput_seq_len}, {cfg.warmup} warm-up + {cfg.repeats} "
                          "timed rounds; in every round each pruned model runs right next to a base run (order alternating); "
                          "measured_speedup = median of those base runs / median of the pruned runs; flop_implied_speedup = "
                          "base analytic FLOPs / pruned analytic FLOPs; efficiency = (measured − 1)/(implied − 1); the random "
                          "criterion is timed for its first seed (all seeds prune the same number of heads)"
                          + ("; every model torch.compile'd (inductor), compiled during the warm-up" if cfg.compile else "; eager mode"),
            "generation": notes.get("generation", f"greedy, 1 x {cfg.gen_prompt} prompt, {cfg.gen_new_tokens} new tokens, "
                                    f"{cfg.gen_repeats} timed rounds after 1 warm-up, paired with base like the forward pass; "
                                    "timed for the primary criterion and random's first seed"),
            "fep_score": "m_i^(≤3) truncates H(X_i | rest) at order 3 (docs/formulas.md); where a layer's pair and triple dividends are "
                         "large the truncation leaves [0, H_i] (it can be negative or exceed H_i), so ε and global rankings "
                         "across layers inherit that error; fep-exact is bounded but saturates",
            "perplexity": "exp(mean token NLL); GSM8K texts (\"Question: …\\nAnswer: …\") scored one by one, WikiText-2 in non-overlapping "
                          "windows; one-shot pruning, no fine-tuning",
        },
    }
    head_scores = {v.key if v.criterion.name != "random" else "random": v.scores for v in variants
                   if v.criterion.name != "random" or v.seed == cfg.seed}
    if ablation is not None:
        head_scores.setdefault("ablation", ablation)
    write_prune_outputs(result, head_scores, out, config_yaml=cfg.to_yaml())
    state.clear()
    return result
