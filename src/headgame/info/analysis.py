"""Everything GT-FEP measures in one layer, from its discretised head outputs (pure).

:func:`analyse_layer` turns the observations [N, H] of one layer into entropies, dividends of
orders ≤ 3 with bootstrap CIs, the full 2^H dividend table (H ≤ ``full_max_heads``), the
summary of the triple dividends (§3.5), the information scores (§3.7), the subset-level Gibbs
inclusion probabilities and the MCMC over coalition structures (§3.6), and saturation
warnings (§3.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from headgame.info import dividends as dv
from headgame.info.entropy import (
    Bootstrap,
    LowOrderEntropies,
    bootstrap_ci,
    dense_codes,
    entropy_from_counts,
    low_order_entropies,
    members,
    subset_entropy_table,
)
from headgame.info.estimators import resolve_estimator
from headgame.info.gibbs import PartitionChain, inclusion_probabilities, mcmc_partitions, subset_gibbs
from headgame.info.scores import fep_exact, fep_order3, shapley_exact, shapley_order3

FULL_MAX_HEADS = 12


@dataclass
class InfoOptions:
    miller_madow: bool = False  # older spelling of estimator="miller-madow"
    bootstrap: int = 200  # resamples over sequences; 0 = none
    seed: int = 0
    full_max_heads: int = FULL_MAX_HEADS  # all 2^H dividends up to this many heads
    beta: float = 1.0
    mcmc_steps: int = 20_000  # 0 = skip the coalition-structure chain
    mcmc_burn_in: int = 2_000
    ci_level: float = 0.95
    ci_method: str = "basic"  # or "percentile" (the textbook interval; biased for plug-in entropies)
    # one of headgame.info.estimators.ESTIMATORS, for every entropy (bootstrap resamples included);
    # last, so that positional construction from before it existed still lines up
    estimator: str = "plugin"

    def __post_init__(self) -> None:
        self.entropy_estimator()  # fail at construction, not layers into a run

    def entropy_estimator(self) -> str:
        """The estimator in force: ``estimator``, or Miller–Madow when only ``miller_madow`` asks for it."""
        # "plugin" is the default, so with miller_madow=True it means the estimator was not chosen
        return resolve_estimator(None if self.estimator == "plugin" else self.estimator, self.miller_madow)


@dataclass
class LayerInfo:
    layer: int
    n_obs: int
    n_heads: int
    log2_k: float
    ent: LowOrderEntropies
    d2: torch.Tensor  # [H, H] pair dividends = MI
    d3: torch.Tensor  # [H, H, H] triple dividends (0 where indices repeat)
    h_full: float
    h_minus: torch.Tensor  # [H], H(X_{N∖i})
    scores: dict[str, np.ndarray]  # name -> [H]
    summary: dv.TripleSummary
    table: torch.Tensor | None = None  # [2^H] subset entropies
    dividends: torch.Tensor | None = None  # [2^H] D_F(S)
    pair_ci: tuple[np.ndarray, np.ndarray] | None = None  # [C2] low, high
    triple_ci: tuple[np.ndarray, np.ndarray] | None = None  # [C3]
    summary_ci: dict[str, list[float]] = field(default_factory=dict)
    chain: PartitionChain | None = None
    max_entropy_by_order: dict[int, float] = field(default_factory=dict)

    @property
    def pairs(self) -> np.ndarray:
        return dv.pair_values(self.d2).numpy()

    @property
    def triples(self) -> np.ndarray:
        return dv.triple_values(self.d3).numpy()

    def summary_dict(self) -> dict:
        pairs = self.pairs
        out = {
            "layer": self.layer,
            "n_obs": self.n_obs,
            "n_heads": self.n_heads,
            "entropy_mean_bits": float(self.ent.h1.mean()),
            "entropy_min_bits": float(self.ent.h1.min()),
            "pair_mean_bits": float(pairs.mean()) if pairs.size else math.nan,
            "pair_min_bits": float(pairs.min()) if pairs.size else math.nan,
            "triples": self.summary.to_dict(),
            "joint_entropy_bits": self.h_full,
            "saturation_ratio": {str(k): v / math.log2(self.n_obs) for k, v in self.max_entropy_by_order.items()} if self.n_obs > 1 else {},
        }
        if self.summary_ci:
            out["triples_ci"] = self.summary_ci
        if self.chain is not None:
            out["coalitions"] = self.chain.to_dict()
        return out


def analyse_layer(layer: int, x: torch.Tensor, seq: torch.Tensor, alphabet_size: int, opts: InfoOptions | None = None) -> LayerInfo:
    """GT-FEP quantities of one layer from its observations ``x`` [N, H] and sequence ids ``seq`` [N]."""
    opts = opts or InfoOptions()
    n, n_heads = x.shape
    log2_k = math.log2(alphabet_size)
    est = opts.entropy_estimator()
    boot = Bootstrap(seq, opts.bootstrap, seed=opts.seed + layer) if opts.bootstrap > 0 else None
    ent = low_order_entropies(x, estimator=est, boot=boot)
    d2 = dv.pair_dividends(ent.h1, ent.h2)  # §3.4: MI
    d3 = dv.triple_dividends(ent.h1, ent.h2, ent.h3)  # §3.4: interaction information
    full_mask = (1 << n_heads) - 1
    table = divs = None
    if n_heads <= opts.full_max_heads:
        table = subset_entropy_table(x, estimator=est)
        divs = dv.dividends_table(table, log2_k)
        h_full = float(table[full_mask])
        h_minus = torch.stack([table[full_mask ^ (1 << i)] for i in range(n_heads)])
    else:
        h_full = float(entropy_from_counts(dense_codes(x)[1], estimator=est))
        keep = [[j for j in range(n_heads) if j != i] for i in range(n_heads)]
        h_minus = torch.tensor(
            [float(entropy_from_counts(dense_codes(x[:, k])[1], estimator=est)) for k in keep],
            dtype=torch.float64,
        )
    scores = {
        "entropy": ent.h1.numpy().copy(),
        "fep": fep_order3(ent.h1, d2, d3).numpy(),
        "fep-exact": fep_exact(h_full, h_minus).numpy(),
        "shapley": shapley_order3(ent.h1, d2, d3).numpy(),
    }
    chain = None
    if table is not None:
        f_table = dv.free_energy_table(table, log2_k)
        scores["gibbs"] = inclusion_probabilities(subset_gibbs(f_table, opts.beta)).numpy()
        scores["shapley-exact"] = shapley_exact(table).numpy()
        if opts.mcmc_steps > 0 and n_heads > 1:
            chain = mcmc_partitions(f_table, beta=opts.beta, steps=opts.mcmc_steps, burn_in=opts.mcmc_burn_in, seed=opts.seed + layer)
    summary = dv.summarise_triples(dv.triple_values(d3))
    info = LayerInfo(
        layer=layer, n_obs=n, n_heads=n_heads, log2_k=log2_k, ent=ent, d2=d2, d3=d3, h_full=h_full,
        h_minus=h_minus, scores=scores, summary=summary, table=table, dividends=divs, chain=chain,
    )
    offdiag = ~torch.eye(n_heads, dtype=torch.bool)
    info.max_entropy_by_order = {1: float(ent.h1.max())}
    if n_heads >= 2:
        info.max_entropy_by_order[2] = float(ent.h2[offdiag].max())
    if n_heads >= 3:
        info.max_entropy_by_order[3] = float(dv.triple_values(ent.h3).max())
    if boot is not None:
        b2 = dv.pair_dividends(ent.boot1, ent.boot2)  # [R, H, H]
        b3 = dv.triple_dividends(ent.boot1, ent.boot2, ent.boot3)  # [R, H, H, H]
        pv, tv = dv.pair_values(b2), dv.triple_values(b3)  # [R, C2], [R, C3]
        ci = lambda samples, est, bounds=None: bootstrap_ci(samples, est, opts.ci_level, opts.ci_method, bounds)  # noqa: E731
        if pv.shape[-1]:
            lo, hi = ci(pv, dv.pair_values(d2), (0.0, math.inf))  # MI ≥ 0
            info.pair_ci = (lo.numpy(), hi.numpy())
        if tv.shape[-1]:
            t_est = dv.triple_values(d3)
            lo, hi = ci(tv, t_est)
            info.triple_ci = (lo.numpy(), hi.numpy())
            stats = {
                "mean": (tv.mean(-1), t_est.mean(), None),
                "median": (tv.quantile(0.5, dim=-1), t_est.quantile(0.5), None),
                "frac_negative": ((tv < 0).to(torch.float64).mean(-1), (t_est < 0).to(torch.float64).mean(), (0.0, 1.0)),
            }
            info.summary_ci = {k: [float(a), float(b)] for k, (v, est, bounds) in stats.items() for a, b in [ci(v, est, bounds)]}
    return info


def dividend_rows(info: LayerInfo, *, max_order: int | None = None) -> list[dict]:
    """One row per subset: layer, order, heads ("0-3-5"), value (bits), ci_low, ci_high."""
    rows: list[dict] = []
    h = info.n_heads
    ci_pairs = {p: i for i, p in enumerate(dv.triu_pairs(h))}
    ci_trip = {t: i for i, t in enumerate(dv.triu_triples(h))}

    def add(heads: tuple[int, ...], value: float) -> None:
        lo = hi = math.nan
        if len(heads) == 2 and info.pair_ci is not None:
            i = ci_pairs[heads]
            lo, hi = float(info.pair_ci[0][i]), float(info.pair_ci[1][i])
        if len(heads) == 3 and info.triple_ci is not None:
            i = ci_trip[heads]
            lo, hi = float(info.triple_ci[0][i]), float(info.triple_ci[1][i])
        rows.append({"layer": info.layer, "order": len(heads), "heads": "-".join(map(str, heads)),
                     "value": float(value), "ci_low": lo, "ci_high": hi})

    if info.dividends is not None:
        limit = h if max_order is None else max_order
        order = sorted(range(1, 1 << h), key=lambda m: (bin(m).count("1"), members(m)))
        for m in order:
            heads = tuple(members(m))
            if len(heads) <= limit:
                add(heads, float(info.dividends[m]))
        return rows
    for i in range(h):
        add((i,), info.log2_k - float(info.ent.h1[i]))
    for i, j in dv.triu_pairs(h):
        add((i, j), float(info.d2[i, j]))
    for i, j, k in dv.triu_triples(h):
        add((i, j, k), float(info.d3[i, j, k]))
    return rows
