"""The one registry of head-scoring criteria (GT-FEP scores and their baselines).

Each :class:`Criterion` maps a :class:`ScoreContext` to an [L, H] array and says which end is
pruned first. Information criteria share one GT-FEP analysis (computed once, lazily); the
others run the model.

| name | score | prunes first |
|---|---|---|
| fep | m_i^(≤3), order-3 marginal contribution (bits) — the primary | lowest |
| fep-exact | H(X_N) − H(X_{N∖i}) (bits; saturates) | lowest |
| shapley | order-3 Shapley value of the entropy game (bits) | lowest |
| gibbs | inclusion probability under P_β(S) ∝ exp(−βF(S)) (≤ 12 heads) | lowest |
| ablation | ΔNLL when the head alone is gated off (nats/token) | lowest |
| michel | E|∂L/∂g_i| through head gates, L2-normalised per layer | lowest |
| attention-entropy | mean per-row attention entropy (bits) | lowest |
| random | uniform draws (seeded) | lowest |
| coupling | Σ_{j≠i} |G_ij| of analyze's G: the most coupled (redundant) heads | highest |
| gtfep-authors | the GT-FEP authors' H(i) + ½ Σ_j MI(i, j), one observation per sequence (nats) | lowest |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headgame.errors import HeadgameError
from headgame.registry import Registry


@dataclass
class ScoreContext:
    """What the criteria may use; expensive parts are computed on first use and cached."""

    model: Any
    tokenizer: Any
    layout: Any
    info_provider: Callable[[], dict] | None = None  # -> {layer: LayerInfo}
    score_seqs: Any = None  # Sequences for the attention statistics
    loss_seqs: Any = None  # Sequences for ablation / michel / coupling (smaller)
    batch_size: int = 4
    seed: int = 0
    analysis_path: str | None = None
    progress: Callable[[str, int, int], None] | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict:
        if "info" not in self.cache:
            if self.info_provider is None:
                raise HeadgameError("this criterion needs the GT-FEP analysis but no data for it was given; pass --score-data")
            self.cache["info"] = self.info_provider()
        return self.cache["info"]

    def step(self, name: str) -> Callable[[int, int], None] | None:
        if self.progress is None:
            return None
        return lambda done, total: self.progress(name, done, total)

    def need(self, what: str, seqs: Any) -> Any:
        if seqs is None:
            raise HeadgameError(f"criterion '{what}' needs scoring text; pass --score-data")
        return seqs


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    kind: str  # "information", "performance", "attention", "coupling", "baseline"
    prune: str  # "lowest" or "highest": which end goes first
    compute: Callable[[ScoreContext], np.ndarray]
    unit: str = ""

    def pruning_key(self, scores: np.ndarray) -> np.ndarray:
        """Ascending key: the smallest keys are pruned first."""
        return np.asarray(scores, float) if self.prune == "lowest" else -np.asarray(scores, float)


CRITERIA: Registry[Criterion] = Registry("criterion", "--criterion")


def register(criterion: Criterion) -> Criterion:
    """Add ``criterion`` to :data:`CRITERIA` under its name (a name is registered once)."""
    if criterion.prune not in ("lowest", "highest"):
        raise ValueError(f"criterion '{criterion.name}': prune must be 'lowest' or 'highest'")
    return CRITERIA.add(criterion.name, criterion)


def get_criterion(name: str) -> Criterion:
    """The criterion named ``name``; an unknown name gets the closest valid names."""
    return CRITERIA.get(name)


def parse_criteria(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise HeadgameError("--criteria is empty; pass e.g. fep,random,ablation")
    for n in names:
        get_criterion(n)
    return list(dict.fromkeys(names))


def _info_score(key: str) -> Callable[[ScoreContext], np.ndarray]:
    def compute(ctx: ScoreContext) -> np.ndarray:
        info = ctx.info()
        rows = []
        for l in range(ctx.layout.n_layers):
            scores = info[l].scores
            if key not in scores:
                raise HeadgameError(
                    f"score '{key}' needs all 2^H subset entropies, which are computed only for layers of at most "
                    f"12 heads (layer {l} has {info[l].n_heads}); use fep or shapley"
                )
            rows.append(scores[key])
        return np.stack(rows)

    return compute


def _ablation(ctx: ScoreContext) -> np.ndarray:
    if "ablation" not in ctx.cache:
        from headgame.measure.importance import ablation_delta_nll

        seqs = ctx.need("ablation", ctx.loss_seqs)
        ctx.cache["ablation"], ctx.cache["ablation_base_nll"] = ablation_delta_nll(
            ctx.model, ctx.layout, ctx.tokenizer, seqs, batch_size=ctx.batch_size, seed=ctx.seed, on_step=ctx.step("ablation"))
    return ctx.cache["ablation"]


def _michel(ctx: ScoreContext) -> np.ndarray:
    from headgame.measure.importance import michel_importance

    seqs = ctx.need("michel", ctx.loss_seqs)
    return michel_importance(ctx.model, ctx.layout, ctx.tokenizer, seqs, batch_size=ctx.batch_size, seed=ctx.seed,
                             on_step=ctx.step("michel"))


def _attention_entropy(ctx: ScoreContext) -> np.ndarray:
    from headgame.measure.importance import attention_entropy

    seqs = ctx.need("attention-entropy", ctx.loss_seqs if ctx.loss_seqs is not None else ctx.score_seqs)
    return attention_entropy(ctx.model, ctx.layout, seqs, batch_size=max(1, ctx.batch_size // 2),
                             on_step=ctx.step("attention-entropy"))


def _gtfep_authors(ctx: ScoreContext) -> np.ndarray:
    """The authors' score (info/authors.py): per-sequence argmax tuples of every head of the
    scoring text, H(i) + ½ Σ_{j≠i} MI(i, j) within each layer, in nats."""
    from headgame.info.authors import authors_scores, example_symbols
    from headgame.measure.symbols import collect_symbols

    seqs = ctx.need("gtfep-authors", ctx.score_seqs)
    sym = collect_symbols(ctx.model, ctx.layout, seqs.input_ids, seqs.attention_mask, batch_size=ctx.batch_size,
                          on_batch=ctx.step("gtfep-authors"))
    seq = sym.seq.numpy()
    return np.stack([authors_scores(example_symbols(sym.x[l].numpy(), seq))["score"] for l in range(ctx.layout.n_layers)])


def _random(ctx: ScoreContext) -> np.ndarray:
    return np.random.default_rng(ctx.seed).random((ctx.layout.n_layers, ctx.layout.n_heads))


def _coupling(ctx: ScoreContext) -> np.ndarray:
    from headgame.io import read_analysis
    from headgame.prune.coupling import compute_coupling, coupling_row_mass

    if ctx.analysis_path:
        analysis = read_analysis(ctx.analysis_path)
    else:
        seqs = ctx.need("coupling", ctx.loss_seqs)
        analysis = compute_coupling(ctx.model, ctx.layout, ctx.tokenizer, seqs, batch_size=ctx.batch_size, seed=ctx.seed)
    return coupling_row_mass(analysis, ctx.layout)


register(Criterion("fep", "GT-FEP order-3 marginal contribution m_i, the primary", "information", "lowest", _info_score("fep"), "bits"))
register(Criterion("fep-exact", "H(X_N) − H(X_{N∖i}), exact conditional entropy (saturates)", "information", "lowest", _info_score("fep-exact"), "bits"))
register(Criterion("shapley", "order-3 Shapley value of the entropy game", "information", "lowest", _info_score("shapley"), "bits"))
register(Criterion("gibbs", "inclusion probability under P_β(S) ∝ exp(−βF(S)) (§3.6)", "information", "lowest", _info_score("gibbs"), "probability"))
register(Criterion("ablation", "ΔNLL when the head alone is gated off", "performance", "lowest", _ablation, "nats/token"))
register(Criterion("michel", "Michel et al. gradient importance E|∂L/∂g| through head gates", "performance", "lowest", _michel, "normalised"))
register(Criterion("attention-entropy", "mean per-row attention entropy", "attention", "lowest", _attention_entropy, "bits"))
register(Criterion("random", "uniform random scores (seeded)", "baseline", "lowest", _random, ""))
register(Criterion("gtfep-authors", "the GT-FEP authors' H(i) + ½ Σ_j MI(i,j), per-sequence symbols", "information", "lowest",
                   _gtfep_authors, "nats"))
register(Criterion("coupling", "row mass Σ|G_ij| of analyze's G: most coupled pruned first", "coupling", "highest", _coupling, ""))
