"""``headgame analyze``: argparse registration (loaded through ``cli.COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
import os

from headgame.analyze.config import AnalyzeConfig


def register(sub: argparse._SubParsersAction) -> None:
    from headgame.cliargs import add_model_arg, add_run_args, add_text_args

    d = AnalyzeConfig()
    p = sub.add_parser(
        "analyze",
        help="measure the head interaction matrix G, Γ, coalitions and redundancy of every layer",
        description=(
            "Measure how attention heads couple: weight coupling ω, gradient coupling ρ, "
            "G = ω ⊙ ρ and Γ(G) = ‖G − I‖_F per layer, coalitions (spectral biclustering + "
            "Mann–Whitney) and redundancy (z-scored head cross-correlations). Writes "
            "analysis.json, config.yaml, PNG heatmaps and a self-contained report.html."
        ),
    )
    add_model_arg(p, d.model)
    p.add_argument("--data", default=d.data, help="text source: default (packaged corpus), a .txt/.jsonl file or folder, gutenberg, hf:NAME[:CONFIG][:SPLIT]")
    add_text_args(p, d.text_field)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help=f"token budget (default {d.max_tokens})")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per block (default {d.seq_len})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"blocks per step (default {d.batch_size})")
    p.add_argument("--layers", default=d.layers, help="all, 5, 0,3,7 or 10-19 (default all)")
    p.add_argument("--heatmap-layers", default=None, help="layers drawn as G heatmaps (default: first, middle, last, max-Γ, min-Γ)")
    p.add_argument("--no-redundancy", action="store_true", help="skip the head cross-correlation statistics")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="save accumulators every N batches (0 = never)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last checkpoint")
    p.add_argument("--adapter", default=None, help="a peft adapter folder (e.g. headgame train's OUT/adapter) applied to --model")
    p.add_argument("--merge-adapter", action="store_true", help="merge --adapter into the weights before analysing")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE.json", "AFTER.json"), default=None,
                   help="compare two analyses instead: ΔG, ΔΓ and the selective-coordination test; writes compare.json/.html to --out")
    add_run_args(p, d, seed_help="seed for masked-LM masking and clustering")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headgame.analyze.run import run_analysis
    from headgame.report import print_summary

    if args.compare:
        from headgame.analyze.compare import print_compare, run_compare

        result = run_compare(args.compare[0], args.compare[1], args.out)
        print_compare(result)
        print(f"wrote {os.path.join(os.path.abspath(args.out), 'compare.html')}")
        return 0
    cfg = AnalyzeConfig(
        model=args.model, data=args.data, text_field=args.text_field, data_dir=args.data_dir,
        max_tokens=args.max_tokens, seq_len=args.seq_len, batch_size=args.batch_size, layers=args.layers,
        out=args.out, redundancy=not args.no_redundancy, heatmap_layers=args.heatmap_layers, seed=args.seed,
        dtype=args.dtype, trust_remote_code=args.trust_remote_code, checkpoint_every=args.checkpoint_every,
        adapter=args.adapter, merge_adapter=args.merge_adapter,
    )
    console = Console(stderr=True)
    analysis = run_analysis(cfg, resume=args.resume, progress=not args.no_progress, console=console)
    print_summary(analysis, console=Console())
    out = os.path.abspath(cfg.out)
    print(f"wrote {os.path.join(out, 'analysis.json')} and {os.path.join(out, 'report.html')}")
    return 0
