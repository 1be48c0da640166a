"""The coupling criterion's scores: each head's row mass of analyze's interaction matrix G.

Σ_{j≠i} |G_ij| measures how strongly head i is coupled to the other heads of its layer (the
GAME-LoRA paper's head interaction matrix, docs/formulas.md#G, #coupling-criterion): the most coupled heads are the
most redundant, so ``--criterion coupling`` prunes the highest first. G comes from an
``analysis.json`` of ``headgame analyze`` (of this very model: :func:`check_analysis_model`) or is
accumulated here with analyze's own collector.
"""

from __future__ import annotations

import numpy as np
import torch

from headgame.analyze.collect import CouplingCollector
from headgame.data.texts import Sequences, sequence_batches
from headgame.errors import HeadgameError
from headgame.game.coupling import interaction_matrix, weight_coupling
from headgame.models.identity import describe
from headgame.models.layout import HeadLayout
from headgame.models.objective import Objective


def check_analysis_model(analysis: dict, path: str, spec: str, model_hash: str | None) -> None:
    """Refuse an analysis of another model (weights hash) or of this model with an adapter on it."""
    model = analysis.get("model") or {}
    fix = f"pass --model {model.get('spec')} or an analysis of {spec} (headgame analyze --model {spec} --layers all)"
    if model.get("hash") and model_hash and model["hash"] != model_hash:
        raise HeadgameError(f"--analysis {path} is of {describe(model.get('spec'), model['hash'])}, not "
                            f"{describe(spec, model_hash)}; {fix}")
    if model.get("adapter"):
        raise HeadgameError(f"--analysis {path} was made with the adapter {model['adapter']} applied, and prune removes heads "
                            f"of {spec} alone; analyse {spec} without --adapter (or analyse and prune the merged model of train --save-merged)")


def coupling_row_mass(analysis: dict, layout: HeadLayout) -> np.ndarray:
    """Σ_{j≠i} |G_ij| per head from an analyze result (``analysis.json``), [L, H]."""
    layers = {int(lay["layer"]): np.asarray(lay["G"], dtype=float) for lay in analysis.get("layers", [])}
    missing = [l for l in range(layout.n_layers) if l not in layers]
    if missing:
        raise HeadgameError(
            f"the analysis lacks layers {missing[:5]}{'...' if len(missing) > 5 else ''}; run headgame analyze --layers all on this model"
        )
    out = np.zeros((layout.n_layers, layout.n_heads))
    for l, g in layers.items():
        if l >= layout.n_layers:
            continue
        if g.shape != (layout.n_heads, layout.n_heads):
            raise HeadgameError(f"G of layer {l} is {g.shape[0]}x{g.shape[1]}, not {layout.n_heads}x{layout.n_heads}; use the analysis of this model")
        out[l] = np.abs(g - np.diag(np.diag(g))).sum(1)
    return out


def compute_coupling(model, layout: HeadLayout, tokenizer, seqs: Sequences, *, batch_size: int = 4, seed: int = 0) -> dict:
    """Run analyze's G accumulation (no redundancy, no report) on ``seqs``; returns {"layers": [{layer, G}]}."""
    objective = Objective(model, layout, tokenizer, seed=seed)
    layers = list(range(layout.n_layers))
    collector = CouplingCollector(model, layout, objective, layers, redundancy=False)
    with collector:
        for ids, mask in sequence_batches(seqs, batch_size):
            collector.step(ids, mask)
    out = []
    for l in layers:
        with torch.no_grad():
            omega = weight_coupling(layout.head_slices(model, l).detach().double())
        out.append({"layer": l, "G": interaction_matrix(omega, collector.grams[l].rho()).tolist()})
    return {"layers": out}
