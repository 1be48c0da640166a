"""Evaluation: the paper's benchmarks behind a narrow request interface, decoding baselines,
per-item results and paired significance tests (docs/formulas.md#evaluation).

Public API (imported lazily so ``import headgame.evaluate`` stays cheap)::

    from headgame.evaluate import EvalConfig, run_eval, HFScorer, TASKS, DECODING, compare
"""

from __future__ import annotations

__all__ = [
    "EvalConfig", "run_eval", "HFScorer", "ScorerConfig", "TASKS", "DECODING", "make_method",
    "LoglikelihoodRequest", "RollingRequest", "GenerateRequest", "compare", "load_eval",
]

_WHERE = {
    "EvalConfig": "headgame.evaluate.config",
    "run_eval": "headgame.evaluate.runner",
    "HFScorer": "headgame.evaluate.scorer",
    "ScorerConfig": "headgame.evaluate.scorer",
    "TASKS": "headgame.evaluate.tasks",
    "DECODING": "headgame.evaluate.decoding",
    "make_method": "headgame.evaluate.decoding",
    "LoglikelihoodRequest": "headgame.evaluate.requests",
    "RollingRequest": "headgame.evaluate.requests",
    "GenerateRequest": "headgame.evaluate.requests",
    "compare": "headgame.evaluate.compare",
    "load_eval": "headgame.evaluate.compare",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'headgame.evaluate' has no attribute {name!r}")

from headgame.runs import make_callable

make_callable(__name__)  # headgame.evaluate(...) runs the command (headgame.api)
