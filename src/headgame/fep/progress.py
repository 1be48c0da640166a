"""The running figures of ``headgame fep``'s progress bar (stderr only; they never feed results):
tokens/s while the argmax-key symbols are collected, then the share of negative triple
dividends over the layers done (docs/formulas.md#triple-summary), then heads/s of the ablation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any


def token_rate(attention_mask: Any, skip: int = 0) -> Callable[[int], str]:
    """``f(done_sequences) -> "1234 tok/s"`` over the real tokens of the sequences done since now;
    ``skip``: sequences already done before (a resumed run)."""
    per_seq = [0] + attention_mask.sum(1).cumsum(0).tolist()  # real tokens in the first k sequences
    t0, skip = time.perf_counter(), min(skip, len(per_seq) - 1)

    def text(done: int) -> str:
        if done <= skip:
            return "— tok/s"
        return f"{(per_seq[done] - per_seq[skip]) / max(time.perf_counter() - t0, 1e-9):.0f} tok/s"

    return text


def step_rate(unit: str) -> Callable[[int], str]:
    """``f(done) -> "3.2 heads/s"`` since the first call."""
    start: list[Any] = []

    def text(done: int) -> str:
        if not start:
            start.extend((time.perf_counter(), done))
            return f"— {unit}/s"
        return f"{(done - start[1]) / max(time.perf_counter() - start[0], 1e-9):.1f} {unit}/s"

    return text


def negative_share(infos: Iterable[Any]) -> str:
    """``"71.3% of 1320 triples < 0"`` over the analysed layers (their triple dividends)."""
    n = neg = 0
    for info in infos:
        n += int(info.triples.size)
        neg += int((info.triples < 0).sum())
    return f"{neg / n:.1%} of {n} triples < 0" if n else "no triples yet"
