"""``headgame prune``: argparse registration (loaded through ``cli.COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    from headgame.cliargs import add_model_arg, add_run_args, add_text_args
    from headgame.prune.config import DEFAULT_COMPARE, PruneConfig
    from headgame.prune.criteria import CRITERIA

    d = PruneConfig()
    p = sub.add_parser(
        "prune",
        help="rank heads by a criterion, remove them physically, measure perplexity, FLOPs and throughput",
        description=(
            "Score every attention head (fep = GT-FEP marginal contribution, or another criterion), prune the lowest "
            "--fraction of heads (globally, keeping one per layer, or --per-layer), remove them physically from the "
            "projections, and measure before and after: perplexity on GSM8K test and WikiText-2 (data directory), "
            "analytic and measured FLOPs, interleaved forward and generation throughput. Writes pruning.json, "
            "pruning_table.md/.csv, head_scores.csv, config.yaml and the pruned model (safetensors) in OUT/model."
        ),
    )
    add_model_arg(p, d.model)
    p.add_argument("--criterion", default=d.criterion, help=f"one of {', '.join(CRITERIA)} (default {d.criterion})")
    p.add_argument("--fraction", type=float, default=d.fraction, help=f"share of heads to prune, in (0, 1) (default {d.fraction})")
    p.add_argument("--per-layer", action="store_true", help="prune round(fraction x H) heads in every layer instead of ranking globally")
    p.add_argument("--compare-criteria", action="store_true", help="also prune by every criterion of --criteria at the same budget")
    p.add_argument("--criteria", default=DEFAULT_COMPARE, help=f"criteria for --compare-criteria (default {DEFAULT_COMPARE})")
    p.add_argument("--random-seeds", type=int, default=d.random_seeds, help=f"seeds of random pruning, mean ± sd (default {d.random_seeds})")
    p.add_argument("--score-data", default=d.score_data, help="text for scoring heads: auto, gsm8k or any analyze source (default auto)")
    add_text_args(p, d.text_field)
    p.add_argument("--gsm8k-format", default=d.gsm8k_format, choices=["qa", "answer", "question"], help="GSM8K text format (default qa)")
    p.add_argument("--score-tokens", type=int, default=d.score_tokens, help=f"tokens of the GT-FEP analysis (default {d.score_tokens})")
    p.add_argument("--loss-tokens", type=int, default=d.loss_tokens, help=f"tokens for ablation/michel/attention-entropy/coupling (default {d.loss_tokens})")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per scoring sequence (default {d.seq_len})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"sequences per forward pass (default {d.batch_size})")
    p.add_argument("--analysis", default=None, help="analysis.json of headgame analyze for --criterion coupling")
    p.add_argument("--alphabet", default=d.alphabet, choices=["absolute", "relative"], help="argmax-key alphabet (default absolute)")
    p.add_argument("--miller-madow", action="store_true", help="Miller-Madow correction of the entropies")
    p.add_argument("--ppl-sets", default=d.ppl_sets, help="gsm8k,wikitext2, one of them, or none (default gsm8k,wikitext2)")
    p.add_argument("--gsm8k-file", default=None, help="GSM8K JSONL instead of DATA_DIR/gsm8k/test.jsonl")
    p.add_argument("--wikitext-file", default=None, help="WikiText text file instead of DATA_DIR/wikitext2/wiki.test.raw.xz")
    p.add_argument("--ppl-max-tokens", type=int, default=d.ppl_max_tokens, help=f"token budget per perplexity set, 0 = the whole set (default {d.ppl_max_tokens})")
    p.add_argument("--ppl-max-len", type=int, default=d.ppl_max_len, help=f"max tokens of one GSM8K text (default {d.ppl_max_len})")
    p.add_argument("--wikitext-window", type=int, default=d.wikitext_window, help=f"WikiText window length (default {d.wikitext_window})")
    p.add_argument("--pseudo-ppl-seeds", type=int, default=d.pseudo_ppl_seeds, help=f"maskings of the BERT pseudo-perplexity (default {d.pseudo_ppl_seeds})")
    p.add_argument("--flops-seq-len", type=int, default=d.flops_seq_len, help=f"sequence length of the FLOPs counts (default {d.flops_seq_len})")
    p.add_argument("--throughput-batch", type=int, default=d.throughput_batch, help=f"sequences per timed forward (default {d.throughput_batch})")
    p.add_argument("--throughput-seq-len", type=int, default=d.throughput_seq_len, help=f"tokens per timed sequence (default {d.throughput_seq_len})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed warm-up rounds (default {d.warmup})")
    p.add_argument("--repeats", type=int, default=d.repeats, help=f"timed rounds, median, at least 5 (default {d.repeats})")
    p.add_argument("--compile", action="store_true", help="time the forward pass of every model under torch.compile (inductor)")
    p.add_argument("--no-generation", action="store_true", help="skip the generation throughput")
    p.add_argument("--gen-prompt", type=int, default=d.gen_prompt, help=f"prompt tokens for generation timing (default {d.gen_prompt})")
    p.add_argument("--gen-new-tokens", type=int, default=d.gen_new_tokens, help=f"new tokens per generation (default {d.gen_new_tokens})")
    p.add_argument("--gen-repeats", type=int, default=d.gen_repeats, help=f"timed generation rounds (default {d.gen_repeats})")
    p.add_argument("--no-save-model", action="store_true", help="do not save the pruned model")
    add_run_args(p, d, seed_help="seed of random pruning and GSM8K sampling")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headgame.prune.config import PruneConfig
    from headgame.prune.run import run_prune

    cfg = PruneConfig(
        model=args.model, criterion=args.criterion, fraction=args.fraction, per_layer=args.per_layer,
        compare_criteria=args.compare_criteria, criteria=args.criteria, random_seeds=args.random_seeds,
        score_data=args.score_data, text_field=args.text_field, data_dir=args.data_dir, gsm8k_format=args.gsm8k_format,
        score_tokens=args.score_tokens, loss_tokens=args.loss_tokens, seq_len=args.seq_len, batch_size=args.batch_size,
        analysis=args.analysis, alphabet=args.alphabet, miller_madow=args.miller_madow, ppl_sets=args.ppl_sets,
        gsm8k_file=args.gsm8k_file, wikitext_file=args.wikitext_file, ppl_max_tokens=args.ppl_max_tokens,
        ppl_max_len=args.ppl_max_len, wikitext_window=args.wikitext_window, pseudo_ppl_seeds=args.pseudo_ppl_seeds,
        flops_seq_len=args.flops_seq_len, throughput_batch=args.throughput_batch, throughput_seq_len=args.throughput_seq_len,
        warmup=args.warmup, repeats=args.repeats, compile=args.compile, generation=not args.no_generation, gen_prompt=args.gen_prompt,
        gen_new_tokens=args.gen_new_tokens, gen_repeats=args.gen_repeats, save_model=not args.no_save_model,
        out=args.out, seed=args.seed, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
    )
    result = run_prune(cfg, progress=not args.no_progress, console=Console(stderr=True))
    print_table(result, Console())
    out = os.path.abspath(cfg.out)
    print(f"wrote {os.path.join(out, 'pruning.json')} and {os.path.join(out, 'pruning_table.md')}"
          + (f"; pruned model in {result['saved_model']}" if result.get("saved_model") else ""))
    return 0


def print_table(result: dict, console) -> None:
    from rich import box
    from rich.table import Table

    from headgame.prune.report import compact

    header, rows = compact(result)
    t = Table(title=f"headgame prune · {result['model']['spec']} · {100 * result['budget']['fraction']:.0f}% of heads",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, caption="speed-up: measured / FLOP-implied (forward); ppl with its change")
    for h in header:
        t.add_column(h, justify="right" if h != "model" else "left", no_wrap=True)
    for r in rows:
        t.add_row(*r)
    console.print(t)
    if "random" in result.get("results", {}):
        console.print("random: the mean over its seeds (sd in pruning_table.md, with every other column: tokens/s, generation, KV heads, ε)",
                      highlight=False)
    for key, text in result.get("notes", {}).items():
        if key.startswith("perplexity_"):
            console.print(f"note: {key}: {text}", highlight=False)
