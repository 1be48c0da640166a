"""``headgame prune``: rank heads, prune them physically, measure before and after.

Pipeline: load → perplexity sets (GSM8K, WikiText-2) → scoring text → head scores per criterion
(:mod:`headgame.prune.criteria`), computed once → selection at every fraction, one-shot or
iterative (:mod:`headgame.prune.plan`) → pruned copies that share every non-attention weight
with the base model (:func:`surgery.pruned_copy`) → perplexity, analytic and measured FLOPs,
interleaved forward and generation throughput → optional healing (:mod:`headgame.prune.heal`) →
``pruning.json``, ``pruning_table.md``/``.csv``, ``head_scores.csv``, ``curves.json``/``.png``,
``config.yaml`` and the pruned model of the primary criterion in ``OUT/model``. Each stage says
what it will cost as it starts (:class:`Stages`).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headgame.errors import HeadgameError
from headgame.outdir import claims_out
from headgame.runs import progress_bar, provenance
from headgame.prune.assemble import Variant, describe, fkey, group_results, run_notes
from headgame.prune.config import PruneConfig
from headgame.prune.criteria import ScoreContext, get_criterion
from headgame.prune.report import write_prune_outputs
from headgame.prune.stages import Stages
from headgame.prune.state import STATE_FILE, PruneState, SavedInfo
from headgame.system import cpu_name


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


ARTEFACTS = ("pruning.json", "config.yaml", "pruning_table.md", "pruning_table.csv", "head_scores.csv", "curves.json",
             "curves.png", "model", "heal", STATE_FILE)
"""What ``headgame prune`` writes into --out (prune/report.py, prune/curves.py, the pruned model, the healing runs)."""


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


def _gated(model: Any, layout: Any, removed: dict[int, list[int]]):
    """The model with ``removed`` heads' outputs zeroed (equal to removing them), for re-scoring."""
    from headgame.models.surgery import zero_gates
    from headgame.models.tap import HeadTap

    return HeadTap(model, layout, gates=zero_gates(layout, removed)) if removed else contextlib.nullcontext()


def _analyse(symbols: Any, opts: Any, removed: dict[int, list[int]], on_layer: Any) -> dict:
    """GT-FEP analysis of every layer over the heads still in it (removed heads leave the game;
    their scores are NaN)."""
    from headgame.info.analysis import analyse_layer

    infos: dict[int, Any] = {}
    for l in symbols.layers:
        gone = set(removed.get(l, []))
        n_heads = symbols.x[l].shape[1]
        kept = [h for h in range(n_heads) if h not in gone]
        info = analyse_layer(l, symbols.x[l][:, kept], symbols.seq, symbols.alphabet_size, opts)
        if gone:
            full = {}
            for k, v in info.scores.items():
                row = np.full(n_heads, np.nan)
                row[kept] = v
                full[k] = row
            info = SavedInfo(full, n_heads)
        infos[l] = info
        on_layer(l)
    return infos


@claims_out("prune", ARTEFACTS, state=(STATE_FILE,))
def _prune(cfg: PruneConfig, loaded: Any, t_start: float, *, resume: bool = False, progress: bool = True,
           console: Any = None) -> dict[str, Any]:
    from headgame.data.texts import load_sequences, resolve_source
    from headgame.info.analysis import InfoOptions
    from headgame.measure.fidelity import fidelity, sentence_embeddings
    from headgame.measure.perplexity import perplexity
    from headgame.measure.symbols import collect_symbols
    from headgame.models.surgery import pruned_copy, save_pruned
    from headgame.prune import cost, plan
    from headgame.prune.curves import write_curves

    out = Path(cfg.out)
    timing: dict[str, float] = {}
    notes: dict[str, str] = {}
    model, tok, layout = loaded
    state = PruneState(out, cfg, loaded.info.get("hash"))  # the settings as asked, before fitting the positions
    cfg = fit_positions(cfg, layout.max_positions, notes)
    n_total = layout.n_layers * layout.n_heads
    fractions = cfg.fraction_list
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
    stages = Stages(bar, progress, timing)

    def step(name: str, done: int, total: int, *, label: str | None = None, live: str | None = None) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total, live="")
        label = label or (f"scoring {scoring[0]} · {name}" if scoring[0] else name)
        bar.update(tasks[name], completed=done, total=total, description=label, **({"live": live} if live is not None else {}))

    def make_ctx(removed: dict[int, list[int]]) -> ScoreContext:
        ctx = ScoreContext(model, tok, layout, score_seqs=score_seqs, loss_seqs=loss_seqs, batch_size=cfg.batch_size,
                           seed=cfg.seed, analysis_path=cfg.analysis, progress=step, removed=removed)
        if not needs_info:
            return ctx

        def symbols() -> Any:
            t0 = time.perf_counter()
            sym = collect_symbols(model, layout, score_seqs.input_ids, score_seqs.attention_mask, alphabet=cfg.alphabet,
                                  batch_size=cfg.batch_size, on_batch=lambda d, t: step("discretise", d, t))
            timing["discretise_s"] = timing.get("discretise_s", 0.0) + time.perf_counter() - t0
            notes["fep_analysis"] = f"{sym.n_obs} observations per layer from {score_seqs.n_sequences} sequences of {source}"
            return sym

        def info(estimator: str) -> dict:
            symbols = ctx.symbols()  # timed as discretise_s
            t0 = time.perf_counter()
            est = "miller-madow" if estimator == "plugin" and cfg.miller_madow else estimator
            opts = InfoOptions(estimator=est, bootstrap=0, seed=cfg.seed, mcmc_steps=0)
            infos = _analyse(symbols, opts, removed, lambda l: step(f"dividends ({est})", l + 1, layout.n_layers))
            timing["dividends_s"] = timing.get("dividends_s", 0.0) + time.perf_counter() - t0
            return infos

        ctx.symbols_provider, ctx.info_provider = symbols, info
        return ctx

    ctx = make_ctx({})
    resumed_at = None
    random_seeds = [cfg.seed + i for i in range(cfg.random_seeds)]
    if resume:
        state.restore(ctx.cache, notes)
        n_variants = sum(cfg.random_seeds if c.name == "random" else 1 for c in crits)
        resumed_at = state.announce(n_variants, len(evalsets))
    variants: list[Variant] = []
    with bar:
        # ---------------------------------------------------------- scores, selections, pruned copies
        stages.calibrate(model, layout, cfg.batch_size, cfg.seq_len, vocab)
        names = [f"{c.name} ({len(random_seeds)} seeds)" if c.name == "random" else c.name for c in crits]
        score_work = (0 if score_seqs is None else score_seqs.n_tokens * 1.3) + sum(
            (n_total + 1) * loss_seqs.n_tokens if c.name == "ablation" else 3 * loss_seqs.n_tokens if c.name in ("michel", "coupling")
            else 1.3 * loss_seqs.n_tokens if c.name == "attention-entropy" else 0 for c in crits)
        n_steps = len(plan.iterative_counts(fractions, n_total, layout.n_layers, cfg.iterative_step)) if cfg.iterative_step else 1
        texts = ([f"{score_seqs.n_tokens:,} tokens (information)"] if score_seqs is not None else []) + (
            [f"{loss_seqs.n_tokens:,} tokens (model-based)"] if loss_seqs is not None else [])
        stages.start("scoring", f"{', '.join(names)} on {' and '.join(texts)}" + (f", {n_steps} iterative steps" if n_steps > 1 else ""),
                     score_work * n_steps, extra=" + the dividends of every layer" if needs_info else "")
        for crit in crits:
            for s in (random_seeds if crit.name == "random" else [cfg.seed]):
                name = crit.name if crit.name != "random" else f"random#{s}"
                scoring[0] = name

                def score(removed: dict[int, list[int]], crit=crit, s=s, name=name) -> np.ndarray:
                    n = sum(len(h) for h in removed.values())
                    key = name if not n else f"{name}~{n}"
                    if key not in state.scores:
                        c = ctx if not n else make_ctx(removed)
                        c.seed = s
                        with _gated(model, layout, removed):
                            state.scores[key] = crit.compute(c)
                        c.seed = cfg.seed
                        state.save(ctx.cache, notes)
                    return state.scores[key]

                if cfg.iterative_step and crit.name != "random":  # re-scoring random draws afresh: still random
                    snaps, history = plan.iterative(score, crit.pruning_key, fractions, layout, cfg.iterative_step)
                    first = history[0]
                else:
                    first = score({})
                    snaps = plan.one_shot(crit.pruning_key(first), fractions, layout, selection=cfg.selection,
                                          per_layer=cfg.per_layer, rounding=cfg.per_layer_rounding)
                for f in fractions:
                    variants.append(Variant(f"{name}@{fkey(f)}", name, crit, s, f, first, snaps[f]))
        scoring[0] = ""
        for v in variants:
            v.model, v.record = pruned_copy(model, layout, v.removed)
        models = {"base": model, **{v.key: v.model for v in variants}}
        shown = {k: (k.rsplit("@", 1)[0] if len(fractions) == 1 else k) for k in models}  # names in the progress lines

        # ---------------------------------------------------------- perplexity
        ppl: dict[str, dict[str, Any]] = {name: dict(state.ppl.get(name, {})) for name in models}
        encoder = not layout.causal  # also the cosine of its sentence embeddings with the unpruned model's

        def missing(name: str, es: Any) -> bool:
            return es.name not in ppl[name] or (encoder and "embedding" not in ppl[name][es.name])

        todo = sum(1 for es in evalsets for n in models if missing(n, es))
        stages.start("perplexity", f"{len(models)} models x {len(evalsets)} sets ({todo} to measure) of "
                     f"{' + '.join(f'{es.seqs.n_tokens:,}' for es in evalsets) or 0} tokens",
                     sum(es.seqs.n_tokens for es in evalsets) * todo / max(1, len(evalsets)))
        for es in evalsets:
            reference = None  # the unpruned model's sentence embeddings of this set (encoders)
            for i, (name, m) in enumerate(models.items()):
                step(f"perplexity {es.name}", i, len(models), label=f"measuring {shown[name]} · perplexity {es.name}")
                if missing(name, es):
                    entry = dict(ppl[name].get(es.name) or perplexity(
                        m, layout, tok, es, batch_size=cfg.batch_size, seeds=cfg.pseudo_ppl_seeds, mlm_proxy=cfg.mlm_proxy))
                    if encoder:
                        if reference is None:
                            reference = sentence_embeddings(model, es.seqs, batch_size=cfg.batch_size)
                        emb = reference if m is model else sentence_embeddings(m, es.seqs, batch_size=cfg.batch_size)
                        entry["embedding"] = fidelity(emb, reference)
                    ppl[name][es.name] = entry
                    state.ppl = ppl
                    state.save(ctx.cache, notes)
                last = ppl[name][es.name].get("ppl")
                step(f"perplexity {es.name}", i + 1, len(models), label=f"perplexity {es.name}",
                     live=f"last: {shown[name]} {last:.3f}" if isinstance(last, (int, float)) else f"last: {shown[name]} —")

        # ---------------------------------------------------------- FLOPs
        flops = dict(state.flops)
        stages.start("FLOPs", f"analytic and FlopCounterMode counts of {len(models)} models at {cfg.flops_seq_len} tokens",
                     2 * cfg.flops_seq_len * sum(1 for n in models if n not in flops))
        for i, (name, m) in enumerate(models.items()):
            step("FLOPs", i, len(models), label=f"measuring {shown[name]} · FLOPs")
            if name not in flops:
                flops[name] = {"analytic": cost.analytic_flops(m, layout, cfg.flops_seq_len),
                               "measured": cost.measured_flops(m, layout, cfg.flops_seq_len, vocab_size=vocab),
                               "analytic_at_throughput_len": cost.analytic_flops(m, layout, cfg.throughput_seq_len)["total"]}
                state.flops = flops
                state.save(ctx.cache, notes)
            step("FLOPs", i + 1, len(models), label="FLOPs")

        # ---------------------------------------------------------- throughput (paired with base)
        # one model per criterion and fraction (random: its first seed; every seed prunes as many heads)
        timed_models = {"base": model, **{v.key: v.model for v in variants if v.criterion.name != "random" or v.seed == cfg.seed}}
        n_runs = 2 * (len(timed_models) - 1) * (cfg.warmup + cfg.repeats)
        stages.start("throughput", f"{n_runs} forward passes of {cfg.throughput_batch} x {cfg.throughput_seq_len}, paired with the base model",
                     n_runs * cfg.throughput_batch * cfg.throughput_seq_len)
        step("forward throughput", 0, 1)
        fwd_models = {k: torch.compile(m) for k, m in timed_models.items()} if cfg.compile else timed_models
        fwd = cost.forward_throughput(fwd_models, layout, batch_size=cfg.throughput_batch, seq_len=cfg.throughput_seq_len,
                                      warmup=cfg.warmup, repeats=cfg.repeats, vocab_size=vocab, seed=cfg.seed)
        step("forward throughput", 1, 1)
        gen = None
        primary_key = f"{crits[0].name if crits[0].name != 'random' else f'random#{cfg.seed}'}@{fkey(cfg.fraction)}"
        if cfg.generation and layout.causal:
            # a secondary metric: the primary criterion and random's first seed at --fraction, to bound the time
            gen_models = {k: m for k, m in timed_models.items() if k in ("base", primary_key, f"random#{cfg.seed}@{fkey(cfg.fraction)}")}
            stages.start("generation", f"{2 * (len(gen_models) - 1) * (cfg.gen_repeats + 1)} greedy generations of "
                         f"{cfg.gen_new_tokens} tokens after {cfg.gen_prompt}")
            step("generation throughput", 0, 1)
            gen = cost.generation_throughput(gen_models, tok, prompt_len=cfg.gen_prompt, new_tokens=cfg.gen_new_tokens,
                                             repeats=cfg.gen_repeats, vocab_size=vocab, seed=cfg.seed)
            step("generation throughput", 1, 1)
        elif not layout.causal:
            notes["generation"] = "not measured: the model is an encoder (no autoregressive generation)"

        # ---------------------------------------------------------- the saved model and its healing
        primary = crits[0].name
        pv = next(v for v in variants if v.key == primary_key)
        saved = None
        if cfg.save_model or cfg.heal_tokens:
            saved = str(save_pruned(pv.model, tok, out / "model", extra={
                "criterion": primary, "fraction": cfg.fraction, "per_layer": cfg.per_layer, "selection": cfg.selection,
                "iterative_step": cfg.iterative_step, "source_model": cfg.model, "source_hash": loaded.info.get("hash")}))
        healed = None
        if cfg.heal_tokens:
            from headgame.prune.heal_stage import heal_and_measure

            stages.start("healing", f"LoRA ({cfg.heal_method}) on {cfg.heal_tokens:,} tokens for the pruned model and the "
                         "unpruned control, then their perplexity", 2 * 3 * cfg.heal_tokens)
            healed = heal_and_measure(cfg, out, saved, primary_key, evalsets, ppl)
        stages.done()

    # ---------------------------------------------------------- assemble
    infos = ctx.cache.get("info")
    ablation = ctx.cache.get("ablation")
    kw = dict(flops=flops, ppl=ppl, fwd=fwd, gen=gen, evalsets=evalsets, layout=layout, info=infos,
              ablation=None if ablation is None or cfg.iterative_step else ablation)
    for v in variants:
        v.results = describe(v.key, v, **kw)
    by_fraction = {fkey(f): group_results([v for v in variants if v.fraction == f], crits) for f in fractions}
    result: dict[str, Any] = {
        **provenance(cfg),
        "model": {"spec": cfg.model, **layout.describe(), "hash": loaded.info.get("hash"), "n_heads_total": n_total},
        "device": device_info(cfg.dtype, loaded.info.get("device", "cpu")),
        "budget": {"fraction": cfg.fraction, "fractions": fractions, "per_layer": cfg.per_layer,
                   "per_layer_rounding": cfg.per_layer_rounding, "selection": cfg.selection, "iterative_step": cfg.iterative_step,
                   "n_pruned": sum(len(h) for h in pv.removed.values())},
        "data": {"score_source": source, "score_tokens": None if score_seqs is None else score_seqs.n_tokens,
                 "loss_tokens": None if loss_seqs is None else loss_seqs.n_tokens,
                 "perplexity_sets": [es.describe() for es in evalsets]},
        "primary": primary,
        "base": describe("base", None, **kw),
        "results": by_fraction[fkey(cfg.fraction)],
        **({"results_by_fraction": by_fraction} if len(fractions) > 1 else {}),
        **({"healed": healed} if healed is not None else {}),
        "saved_model": saved if cfg.save_model else None,
        "timing": {**{k: round(v, 2) for k, v in timing.items()}, "seconds": round(time.perf_counter() - t_start, 2),
                   "forward_tokens_per_s_at_start": None if stages.rate is None else round(stages.rate, 1),
                   **({"resumed_at": resumed_at} if resumed_at else {})},
        "notes": {**notes, **run_notes(cfg, notes)},
    }
    head_scores = {v.name if v.criterion.name != "random" else "random": v.scores for v in variants
                   if v.fraction == cfg.fraction and (v.criterion.name != "random" or v.seed == cfg.seed)}
    if ablation is not None:
        head_scores.setdefault("ablation", ablation)
    write_prune_outputs(result, head_scores, out, config_yaml=cfg.to_yaml())
    if len(fractions) > 1:
        write_curves(result, out)
    if not cfg.save_model and saved:
        import shutil

        shutil.rmtree(saved, ignore_errors=True)  # saved only to heal it
    state.clear()
    return result
