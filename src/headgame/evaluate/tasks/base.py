"""What a benchmark is: documents, the requests each becomes, and how results become a score.

A task never sees tensors: it turns one document into request dataclasses
(:mod:`headgame.evaluate.requests`) and the model's answers into one per-item record. Every
record carries ``num`` and ``den``: the task score is ``transform(Σ num / Σ den)``, so a mean
accuracy (den = 1), bits per byte (num = −log₂ P, den = bytes) and a perplexity
(exp of Σ NLL / Σ tokens) are all resampled the same way by the paired bootstrap.
"""

from __future__ import annotations

import math
import random
import re
import string
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar

from headgame.data.benchmarks import Found, iter_jsonl, locate, require
from headgame.registry import Registry


@dataclass
class TaskOptions:
    """Options that change what a task reads or asks (from :class:`EvalConfig`)."""

    data_dir: str | None = None
    seed: int = 42
    mmlu_shots: int = 5
    truthfulqa_version: str = "v0"
    truthfulqa_mc2_rule: str = "lm-eval"
    """Which MC2 answers are true: "lm-eval" (those before the first false one) or "labels"."""
    max_new_tokens: int | None = None
    """Override of each generation task's token budget (None: the task's own)."""


class Task:
    """Base class of a registered benchmark."""

    name: ClassVar[str]
    label: ClassVar[str]  # the column of the paper's table
    group: ClassVar[str]  # "halluc", "knowledge" or "extra" (docs/formulas.md#aggregates)
    kind: ClassVar[str]  # "loglikelihood", "rolling" or "generate"
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    binary: ClassVar[bool] = True  # per-item outcome is 0/1 (McNemar applies)
    transform: ClassVar[str] = "identity"  # or "exp" (perplexity)
    description: ClassVar[str] = ""
    labels: ClassVar[bool] = False
    """The model picks one of a few fixed labels (Yes/No, A-D), so always giving the most frequent
    gold label is a baseline; False where it scores whole answers, whose order it never sees."""

    def __init__(self, options: TaskOptions | None = None) -> None:
        self.options = options or TaskOptions()
        self.found: Found | None = None
        self.notes: list[str] = []

    # ---------------------------------------------------------------- data
    def candidates(self) -> list[Any]:
        raise NotImplementedError

    def locate(self) -> Found:
        self.found = locate(self.name, self.options.data_dir, self.candidates())
        if self.found.note:
            self.notes.append(self.found.note)
        return self.found

    def docs(self) -> list[dict]:
        """Every document of the evaluation split, in file order."""
        raise NotImplementedError

    def jsonl_docs(self, fields: tuple[str, ...], check: Callable[[dict, Any, int], None] | None = None) -> list[dict]:
        """Rows from the hub, or the located JSONL file's records, each required to hold
        ``fields`` (and to pass ``check(record, path, line)``, which raises on a bad one)."""
        found = self.locate()
        if found.rows is not None:
            return found.rows
        docs = []
        for n, obj in iter_jsonl(found.path):
            require(obj, fields, found.path, n)
            if check is not None:
                check(obj, found.path, n)
            docs.append(obj)
        return docs

    # ---------------------------------------------------------------- per item
    def requests(self, doc: dict) -> list[Any]:
        raise NotImplementedError

    def process(self, doc: dict, results: list[Any]) -> dict:
        """One record: at least ``num`` and ``den``; anything else is kept for inspection."""
        raise NotImplementedError

    # ---------------------------------------------------------------- aggregate
    def score(self, records: list[dict]) -> float:
        num = sum(r["num"] for r in records)
        den = sum(r["den"] for r in records)
        if den == 0:
            return math.nan
        value = num / den
        return math.exp(value) if self.transform == "exp" else value

    def secondary(self, records: list[dict]) -> dict[str, float]:
        """Other metrics of the same items (e.g. WikiText's word perplexity)."""
        return {}

    def info(self) -> dict:
        return {
            "name": self.name, "label": self.label, "group": self.group, "kind": self.kind,
            "metric": self.metric, "higher_is_better": self.higher_is_better, "binary": self.binary,
            "transform": self.transform, "description": self.description,
            "data": self.found.source if self.found else None, "notes": list(self.notes),
        }


TASKS: Registry[type[Task]] = Registry("task", "--tasks")


def sample_indices(n_docs: int, n_items: int, seed: int = 42, limit: int | None = None) -> list[int]:
    """Spec game-lora §6.1: min(N, n_docs) documents drawn uniformly without replacement with a
    seeded RNG, sorted. ``limit`` keeps the first ``limit`` draws, so a smaller run is a subset
    of the full one."""
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    k = min(n_items, n_docs)
    if limit is not None:
        k = min(k, limit)
    return sorted(order[:k])


# --------------------------------------------------------------------------- exact match
_ARTICLES = re.compile(r"\b(?:The |the |An |A |The |a |an )")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """lm-eval's nq_open normalisation: drop articles, lower-case, drop punctuation."""
    return _ARTICLES.sub("", text).lower().translate(_PUNCT)


def exact_match(prediction: str, answers: list[str]) -> bool:
    """True if the (left-stripped) prediction equals any normalised answer."""
    pred = normalise_answer(prediction.lstrip())
    return any(pred == normalise_answer(a) for a in answers)


def mc_record(results: list[Any], gold: int, extra: dict | None = None) -> dict:
    """Accuracy of the highest log-likelihood choice (ties go to the first, as numpy argmax)."""
    lls = [r.logprob for r in results]
    best = max(range(len(lls)), key=lambda i: (lls[i], -i))
    return {"num": float(best == gold), "den": 1, "pred": best, "gold": gold,
            "lls": [round(x, 4) for x in lls], **(extra or {})}
