"""The registered benchmarks, one small module each; importing this package registers them in
the order of the paper's table (docs/formulas.md#benchmarks), then the pruning work's GSM8K perplexity."""

from __future__ import annotations

from headgame.evaluate.tasks import halueval, memotrap, truthfulqa  # noqa: F401  (hallucination)
from headgame.evaluate.tasks import mmlu, openqa, wikitext, winogrande  # noqa: F401  (knowledge)
from headgame.evaluate.tasks import gsm8k_ppl  # noqa: F401  (extra)
from headgame.evaluate.tasks.base import TASKS, Task, TaskOptions, sample_indices

HALLUC = tuple(n for n in TASKS if TASKS.get(n).group == "halluc")
KNOWLEDGE = tuple(n for n in TASKS if TASKS.get(n).group == "knowledge")

__all__ = ["TASKS", "Task", "TaskOptions", "sample_indices", "HALLUC", "KNOWLEDGE"]
