"""``headgame fep``: argparse registration (loaded through ``cli.COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
import math
import os


def register(sub: argparse._SubParsersAction) -> None:
    from headgame.cliargs import add_config_flags, add_run_options
    from headgame.fep.config import FepConfig

    p = sub.add_parser(
        "fep",
        help="GT-FEP: Harsanyi dividends of head entropies, triple redundancy per layer, head marginal contributions",
        description=(
            "Discretise every head's output as its argmax key index, estimate joint entropies of "
            "head subsets, and report Harsanyi dividends (pairs = mutual information, triples = interaction "
            "information), per-layer fractions of negative triples with a Wilcoxon test, head scores (fep, fep-exact, "
            "shapley, gibbs), coalition-structure MCMC and the ε-Nash check against ablation ΔNLL. Writes "
            "dividends.csv|parquet, layer_summary.csv, head_scores.csv, fep.json, PNG histograms and report.html."
        ),
    )
    add_config_flags(p, FepConfig, aliases={"table_format": ("--format",)})
    add_run_options(p, resume="continue the interrupted run in DIR (default: --out) from its last checkpoint; flags not given keep the run's values")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headgame.cliargs import apply_threads, config_from_args, given
    from headgame.fep.config import FepConfig
    from headgame.fep.run import run_fep
    from headgame.fep.state import STATE_FILE
    from headgame.runs import resume_config

    apply_threads(args)
    if args.resume is not None:
        flags = given(args, FepConfig)
        cfg = resume_config(FepConfig, args.resume or flags.get("out", FepConfig.out), STATE_FILE, flags)
    else:
        cfg = config_from_args(args, FepConfig)
    err = Console(stderr=True)
    result = run_fep(cfg, resume=args.resume is not None, progress=not args.no_progress, console=err)
    from headgame.dist import is_main

    if not is_main():  # rank 0 of several processes reports
        return 0
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
