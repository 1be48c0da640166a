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
| fep-mm | m_i^(≤3) from Miller–Madow-corrected entropies (bits) | lowest |
| fep-cs | m_i^(≤3) from Chao–Shen entropies (bits) | lowest |
| fep-layer | m_i^(≤3) z-scored within its layer (layers compared on one scale) | lowest |
| shapley-exact | exact Shapley value of the entropy game v(S) = H(X_S) (≤ 12 heads per layer; bits) | lowest |

In an iterative run (prune/plan.py) ``removed`` names the heads already pruned: the model is
scored with them gated off, and the information criteria leave them out of their layer's game.
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
    info_provider: Callable[[str], dict] | None = None  # estimator -> {layer: LayerInfo}
    symbols_provider: Callable[[], Any] | None = None  # -> HeadSymbols of score_seqs (shared by the information criteria)
    score_seqs: Any = None  # Sequences for the attention statistics
    loss_seqs: Any = None  # Sequences for ablation / michel / coupling (smaller)
    batch_size: int = 4
    seed: int = 0
    analysis_path: str | None = None
    progress: Callable[[str, int, int], None] | None = None
    removed: dict[int, list[int]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    def info(self, estimator: str = "plugin") -> dict:
        """The GT-FEP analysis of every layer with ``estimator``'s entropies (cached per estimator)."""
        key = "info" if estimator == "plugin" else f"info:{estimator}"
        if key not in self.cache:
            if self.info_provider is None:
                raise HeadgameError("this criterion needs the GT-FEP analysis but no data for it was given; pass --score-data")
            self.cache[key] = self.info_provider(estimator)
        return self.cache[key]

    def symbols(self) -> Any:
        """The argmax-key symbols of the scoring text (collected once)."""
        if "symbols" not in self.cache:
            if self.symbols_provider is None:
                raise HeadgameError("this criterion needs the scoring text's symbols but no data for it was given; pass --score-data")
            self.cache["symbols"] = self.symbols_provider()
        return self.cache["symbols"]

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


def _info_score(key: str, estimator: str = "plugin") -> Callable[[ScoreContext], np.ndarray]:
    def compute(ctx: ScoreContext) -> np.ndarray:
        info = ctx.info(estimator)
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


def _layer_z(ctx: ScoreContext) -> np.ndarray:
    """m_i z-scored within its layer: (m_i − mean_ℓ) / sd_ℓ over the layer's heads still in the game,
    so that a layer whose heads share many bits is not emptied by a global ranking."""
    m = _info_score("fep")(ctx)
    out = np.full_like(m, np.nan)
    for l in range(m.shape[0]):
        row = m[l]
        live = np.isfinite(row)
        sd = row[live].std() if live.sum() > 1 else 0.0
        out[l, live] = (row[live] - row[live].mean()) / sd if sd > 1e-12 else 0.0
    return out


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

    if ctx.symbols_provider is None:
        seqs = ctx.need("gtfep-authors", ctx.score_seqs)
        sym = collect_symbols(ctx.model, ctx.layout, seqs.input_ids, seqs.attention_mask, batch_size=ctx.batch_size,
                              on_batch=ctx.step("gtfep-authors"))
    else:
        sym = ctx.symbols()
    seq = sym.seq.numpy()
    out = np.full((ctx.layout.n_layers, ctx.layout.n_heads), np.nan)
    for l in range(ctx.layout.n_layers):
        kept = [h for h in range(ctx.layout.n_heads) if h not in ctx.removed.get(l, [])]
        out[l, kept] = authors_scores(example_symbols(sym.x[l].numpy()[:, kept], seq))["score"]
    return out


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
register(Criterion("fep-mm", "m_i from Miller–Madow-corrected entropies", "information", "lowest", _info_score("fep", "miller-madow"), "bits"))
register(Criterion("fep-cs", "m_i from Chao–Shen (coverage-adjusted) entropies", "information", "lowest", _info_score("fep", "chao-shen"), "bits"))
register(Criterion("fep-layer", "m_i z-scored within its layer", "information", "lowest", _layer_z, "z"))
register(Criterion("shapley-exact", "exact Shapley value of the entropy game H(X_S)", "information", "lowest", _info_score("shapley-exact"), "bits"))
register(Criterion("coupling", "row mass Σ|G_ij| of analyze's G: most coupled pruned first", "coupling", "highest", _coupling, ""))
