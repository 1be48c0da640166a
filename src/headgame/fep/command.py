"""``headgame fep``: argparse registration (loaded through ``cli.COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
import math
import os


def register(sub: argparse._SubParsersAction) -> None:
    from headgame.cliargs import add_model_arg, add_run_args, add_text_args
    from headgame.fep.config import FepConfig

    d = FepConfig()
    p = sub.add_parser(
        "fep",
        help="GT-FEP: Harsanyi dividends of head entropies, triple redundancy per layer, head marginal contributions",
        description=(
            "Discretise every head's output as its argmax key index (spec gt-fep §3.1), estimate joint entropies of "
            "head subsets, and report Harsanyi dividends (pairs = mutual information, triples = interaction "
            "information), per-layer fractions of negative triples with a Wilcoxon test, head scores (fep, fep-exact, "
            "shapley, gibbs), coalition-structure MCMC and the ε-Nash check against ablation ΔNLL. Writes "
            "dividends.csv|parquet, layer_summary.csv, head_scores.csv, fep.json, PNG histograms and report.html."
        ),
    )
    add_model_arg(p, d.model)
    p.add_argument("--data", default=d.data, help="gsm8k (test problems, one sequence each), auto (gsm8k when available, else the packaged corpus), or any analyze source (default auto)")
    add_text_args(p, d.text_field)
    p.add_argument("--gsm8k-format", default=d.gsm8k_format, choices=["qa", "answer", "question"], help="GSM8K text format (default qa)")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help=f"token budget (default {d.max_tokens})")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per sequence (default {d.seq_len})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"sequences per forward pass (default {d.batch_size})")
    p.add_argument("--layers", default=d.layers, help="all, 5, 0,3,7 or 10-19 (default all)")
    p.add_argument("--alphabet", default=d.alphabet, choices=["absolute", "relative"], help="argmax key index or offset q-k (default absolute)")
    p.add_argument("--miller-madow", action="store_true", help="apply the Miller-Madow bias correction to every entropy")
    p.add_argument("--bootstrap", type=int, default=d.bootstrap, help=f"bootstrap resamples over sequences for CIs, 0 = none (default {d.bootstrap})")
    p.add_argument("--ci-method", default=d.ci_method, choices=["basic", "percentile"], help="bootstrap interval: basic (bias-corrected for plug-in entropies) or percentile (default basic)")
    p.add_argument("--full-max-heads", type=int, default=d.full_max_heads, help=f"all 2^H dividends for layers with at most this many heads (default {d.full_max_heads})")
    p.add_argument("--beta", type=float, default=d.beta, help="precision of the Gibbs distributions, 1/bit (default 1)")
    p.add_argument("--mcmc-steps", type=int, default=d.mcmc_steps, help=f"MCMC steps over coalition structures per layer, 0 = skip (default {d.mcmc_steps})")
    p.add_argument("--mcmc-burn-in", type=int, default=d.mcmc_burn_in, help=f"MCMC burn-in steps (default {d.mcmc_burn_in})")
    p.add_argument("--fraction", type=float, default=d.fraction, help=f"share of heads pruned for the ε-Nash report (default {d.fraction})")
    p.add_argument("--per-layer", action="store_true", help="ε-Nash pruning within each layer instead of globally")
    p.add_argument("--ablation-tokens", type=int, default=d.ablation_tokens, help=f"tokens for per-head ablation ΔNLL (Spearman check), 0 = skip (default {d.ablation_tokens})")
    p.add_argument("--format", dest="table_format", default=d.table_format, choices=["csv", "parquet"], help="dividends table format (default csv)")
    add_run_args(p, d, seed_help="seed for GSM8K sampling, bootstrap and MCMC")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headgame.cliargs import add_model_arg, add_run_args, add_text_args
    from headgame.fep.config import FepConfig
    from headgame.fep.run import run_fep

    cfg = FepConfig(
        model=args.model, data=args.data, text_field=args.text_field, data_dir=args.data_dir, gsm8k_format=args.gsm8k_format,
        max_tokens=args.max_tokens, seq_len=args.seq_len, batch_size=args.batch_size, layers=args.layers,
        alphabet=args.alphabet, miller_madow=args.miller_madow, bootstrap=args.bootstrap, ci_method=args.ci_method, full_max_heads=args.full_max_heads,
        beta=args.beta, mcmc_steps=args.mcmc_steps, mcmc_burn_in=args.mcmc_burn_in, fraction=args.fraction,
        per_layer=args.per_layer, ablation_tokens=args.ablation_tokens, table_format=args.table_format, out=args.out,
        seed=args.seed, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
    )
    err = Console(stderr=True)
    result = run_fep(cfg, progress=not args.no_progress, console=err)
    for w in result.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    print_summary(result, Console())
    print(f"wrote {os.path.join(os.path.abspath(cfg.out), 'fep.json')} and {os.path.join(os.path.abspath(cfg.out), 'report.html')}")
    return 0


def print_summary(result: dict, console) -> None:
    from rich.table import Table

    def f(x, d=3):
        return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else (f"{x:.{d}f}" if isinstance(x, float) else str(x))

    t = Table(title=f"GT-FEP · {result['model']['spec']} · {result['data']['n_observations']} observations/layer",
              caption="H̄: mean head entropy (bits); MI: mean pair dividend; triple dividends: share < 0 with its bootstrap "
                      "CI, mean, median, one-sided Wilcoxon p")
    for col in ("layer", "H̄", "MI", "<0", "95% CI", "mean", "median", "p(<0)"):
        t.add_column(col, justify="right", no_wrap=True)
    for lay in result["layers"]:
        tr = lay["triples"]
        ci = lay.get("triples_ci", {}).get("frac_negative")
        t.add_row(str(lay["layer"]), f(lay["entropy_mean_bits"], 2), f(lay["pair_mean_bits"]), f(tr["frac_negative"], 2),
                  f"{ci[0]:.2f}–{ci[1]:.2f}" if ci else "–", f(tr["mean"]), f(tr["median"]),
                  "–" if tr["wilcoxon_p"] is None else f"{tr['wilcoxon_p']:.2g}")
    console.print(t)
    s = result["summary"]
    console.print(
        f"triples < 0 over the model: {100 * s['triples']['frac_negative']:.1f}% (median {f(s['triples']['median'])} bits); "
        f"{s['layers_majority_negative_and_median_below_0']}/{s['n_layers']} layers with most triples negative and median < 0",
        highlight=False,
    )
    nash = result.get("epsilon_nash")
    if nash:
        msg = (f"ε-Nash at {100 * nash['fraction']:.0f}% pruned by fep: ε = {nash['epsilon_bits']:.3f} bits "
               f"({nash['epsilon_relative']:.3f} of mean H_i)")
        if nash.get("spearman_rho") is not None:
            msg += f"; Spearman(fep, ablation ΔNLL) = {nash['spearman_rho']:.3f} (p = {nash['spearman_p']:.2g})"
        console.print(msg, highlight=False)
