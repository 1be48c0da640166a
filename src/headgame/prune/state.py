"""Checkpoints of ``headgame prune``: one state file in the output folder (the run scaffold's StateFile).

Saved after each criterion's scores (with what the criteria share: the GT-FEP head scores and
the ablation ΔNLL), after each perplexity of each model on each set, and after each model's
FLOPs. Throughput and generation speed are timed again on resume (timings cannot be kept
across processes). The pruned copies are rebuilt from the saved scores, which select the same
heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headgame.runs import StateFile, announce_resume

STATE_FILE = ".prune-state.safetensors"


@dataclass
class SavedInfo:
    """What the criteria and the report read of one layer's GT-FEP analysis, after a resume."""

    scores: dict[str, np.ndarray]
    n_heads: int


def _np(t: Any) -> np.ndarray:
    return t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


class PruneState:
    """Where a prune run is: ``scores`` per variant key, the shared ``cache`` of the criteria,
    ``ppl[model][set]`` and ``flops[model]`` of the models measured so far."""

    def __init__(self, out: Path, cfg: Any, model_hash: str | None) -> None:
        self.file = StateFile(Path(out) / STATE_FILE, cfg, model_hash)
        self.scores: dict[str, np.ndarray] = {}
        self.cache: dict[str, Any] = {}
        self.notes: dict[str, str] = {}
        self.ppl: dict[str, dict[str, Any]] = {}
        self.flops: dict[str, dict[str, Any]] = {}

    def restore(self, ctx_cache: dict[str, Any], notes: dict[str, str]) -> None:
        """Load the state and put the criteria's shared results back into ``ctx_cache``."""
        run = self.file.load()
        self.scores = {k: _np(v) for k, v in run["scores"].items()}
        self.notes, self.ppl, self.flops = dict(run["notes"]), run["ppl"], run["flops"]
        cache = run["cache"]
        if cache.get("info") is not None:
            ctx_cache["info"] = {int(l): SavedInfo({k: _np(v) for k, v in d["scores"].items()}, int(d["n_heads"]))
                                 for l, d in cache["info"].items()}
        if cache.get("ablation") is not None:
            ctx_cache["ablation"] = _np(cache["ablation"])
            ctx_cache["ablation_base_nll"] = cache["ablation_base_nll"]
        notes.update(self.notes)

    def save(self, ctx_cache: dict[str, Any], notes: dict[str, str]) -> None:
        info = ctx_cache.get("info")
        self.file.save({
            "scores": self.scores,
            "cache": {"info": None if info is None else {l: {"scores": dict(i.scores), "n_heads": i.n_heads} for l, i in info.items()},
                      "ablation": ctx_cache.get("ablation"), "ablation_base_nll": ctx_cache.get("ablation_base_nll")},
            "notes": dict(notes), "ppl": self.ppl, "flops": self.flops,
        })

    def clear(self) -> None:
        self.file.clear()

    def announce(self, n_variants: int, n_sets: int) -> str:
        """Print (stderr) and return the stage this run continues at."""
        n_models = n_variants + 1
        n_ppl = sum(len(v) for v in self.ppl.values())
        if len(self.scores) < n_variants:
            stage, done, total = "scoring", len(self.scores), n_variants
        elif n_ppl < n_sets * n_models:
            stage, done, total = "perplexity", n_ppl, n_sets * n_models
        elif len(self.flops) < n_models:
            stage, done, total = "FLOPs", len(self.flops), n_models
        else:
            stage, done, total = "throughput", 0, 1
        announce_resume(stage, done, total)
        return f"{stage} {done}/{total}"
