"""The narrow evaluation interface: three request kinds and the model protocol that answers them.

As in lm-evaluation-harness, every benchmark is reduced to plain requests, so a task never
touches tensors and a model never knows which benchmark asked:

* :class:`LoglikelihoodRequest` – log P(continuation | context) and whether the continuation is
  the greedy one;
* :class:`RollingRequest` – log P(text) of a whole document, scored in disjoint windows;
* :class:`GenerateRequest` – greedy generation until a stop sequence.

``cad_span`` marks the characters of the context that are the *evidence* (knowledge, document,
instruction): context-aware decoding (docs/formulas.md#cad) contrasts the prompt with and without
that span. Requests without a span are scored plainly by every decoding method that needs one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Progress = Callable[..., None]
"""Progress callback of the model protocol: ``progress(done)`` with the number of requests done so
far, or ``progress(done, finished)`` with the answers of this batch too (request index -> result),
from which the progress bar shows a running score."""


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score ``continuation`` after ``context`` (the context itself is not scored)."""

    context: str
    continuation: str
    cad_span: tuple[int, int] | None = None
    """Character span [start, end) of ``context`` removed for CAD's context-free view."""


@dataclass(frozen=True)
class RollingRequest:
    """Score every token of ``text`` (one document), conditioning each window on the prefix token."""

    text: str


@dataclass(frozen=True)
class GenerateRequest:
    """Greedy continuation of ``context`` until one of ``until`` or ``max_new_tokens``."""

    context: str
    until: tuple[str, ...] = ("\n",)
    max_new_tokens: int = 32
    cad_span: tuple[int, int] | None = None


@dataclass(frozen=True)
class LoglikelihoodResult:
    logprob: float
    is_greedy: bool
    n_tokens: int


@dataclass(frozen=True)
class RollingResult:
    logprob: float
    n_tokens: int


@runtime_checkable
class LanguageModel(Protocol):
    """What the task runner needs from a model: :class:`~headgame.evaluate.scorer.HFScorer` implements
    it, and any object with these three methods can be passed to :func:`~headgame.evaluate.runner.run_tasks`."""

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]: ...

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]: ...

    def generate_until(self, requests: Sequence[GenerateRequest]) -> list[str]: ...


def without_span(context: str, span: tuple[int, int] | None) -> str:
    """The context with the evidence span removed (CAD's second view); unchanged without a span."""
    if span is None:
        return context
    start, end = span
    return context[:start] + context[end:]
