"""The loss terms of one optimizer step: what a training method hands the arbitration."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Task:
    """A weighted loss term and the parameter indices its gradient can reach."""

    name: str
    loss: Tensor  # already multiplied by λ(t) and divided by the accumulation steps
    indices: list[int] | None  # None = all trainable parameters


@dataclass
class StepTerms:
    tasks: list[Task]
    log: dict[str, float] = field(default_factory=dict)
