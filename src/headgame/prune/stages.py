"""What each stage of ``headgame prune`` will cost, said as it starts, and what it took.

The estimate divides the stage's forward-pass tokens by the base model's forward rate, measured
once at the start on one batch; stages that are not forward passes (the dividends, healing's
backward passes) are named beside it.
"""

from __future__ import annotations

import time
from typing import Any

import torch


class Stages:
    """Says what each stage will cost as it starts, from a measured forward rate, and what it took."""

    def __init__(self, bar: Any, enabled: bool, timing: dict[str, float]) -> None:
        self.bar, self.enabled, self.timing = bar, enabled, timing
        self.rate: float | None = None  # forward tokens/s of the base model
        self._name: str | None = None
        self._t0 = 0.0

    def calibrate(self, model: Any, layout: Any, batch: int, seq_len: int, vocab: int) -> None:
        from headgame.prune.cost import _forward_kwargs

        ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
        kw = _forward_kwargs(layout, ids.to(next(model.parameters()).device))
        with torch.inference_mode():
            model(**kw)  # warm-up
            t0 = time.perf_counter()
            model(**kw)
        self.rate = batch * seq_len / max(time.perf_counter() - t0, 1e-9)

    def _say(self, text: str) -> None:
        if self.enabled:  # --no-progress keeps stderr for errors and notes
            self.bar.console.print(text, highlight=False, markup=False)

    def start(self, name: str, work: str, forward_tokens: float | None = None, extra: str = "") -> None:
        """Stage ``name`` begins: ``work`` says how much; ``forward_tokens`` gives the estimate."""
        self.done()
        est = ""
        if forward_tokens is not None and self.rate:
            est = f" ≈ {_duration(forward_tokens / self.rate)}"
        self._say(f"[{name}] {work}{est}{extra}")
        self._name, self._t0 = name, time.perf_counter()

    def done(self) -> None:
        if self._name is not None:
            took = time.perf_counter() - self._t0
            self.timing[f"{self._name}_s"] = self.timing.get(f"{self._name}_s", 0.0) + took
            self._say(f"[{self._name}] took {_duration(took)}")
            self._name = None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
