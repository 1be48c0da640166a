"""The running figures of ``headgame eval``'s progress bar: items/s and the score so far of the
task whose items are being finished.

The model answers requests of every task at once (grouped by request kind, shared prefixes run
once), and reports each batch of answers through the progress callback. An item is done when
all its requests are answered; :class:`LiveScores` then processes it exactly as the runner will
and keeps the task's records, so the bar shows the score the finished items give. It only reads:
eval.json comes from the runner's own pass over the answers, whatever the bar showed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


class LiveScores:
    """Items finished so far and their task scores, fed with answered requests."""

    def __init__(self, tasks: Mapping[str, Any], chosen: Mapping[str, tuple[list[int], list[dict], list[list[Any]]]]) -> None:
        self.tasks, self.chosen = tasks, chosen
        self.waiting: dict[Any, list[tuple[str, int]]] = {}  # request -> the items that need it
        self.missing: dict[tuple[str, int], int] = {}  # item -> requests not answered yet
        for name, (_, _, reqs) in chosen.items():
            for pos, rs in enumerate(reqs):
                distinct = set(rs)
                self.missing[(name, pos)] = len(distinct)
                for r in distinct:
                    self.waiting.setdefault(r, []).append((name, pos))
        self.answers: dict[Any, Any] = {}
        self.records: dict[str, list[dict]] = {name: [] for name in chosen}
        self.current: str | None = None
        self.start()

    def start(self) -> None:
        """Restart the items/s clock (at the start of each request kind)."""
        self.t0, self.n_since = time.perf_counter(), 0

    def add(self, answered: Mapping[Any, Any]) -> None:
        """Record answers (request -> result); process every item they complete."""
        for req, res in answered.items():
            if req in self.answers:
                continue
            self.answers[req] = res
            for name, pos in self.waiting.pop(req, ()):
                self.missing[(name, pos)] -= 1
                if self.missing[(name, pos)] == 0:
                    ids, picked, reqs = self.chosen[name]
                    rec = self.tasks[name].process(picked[pos], [self.answers[r] for r in reqs[pos]])
                    self.records[name].append({"id": ids[pos], **rec})
                    self.current = name
                    self.n_since += 1

    def text(self) -> str:
        """``12.3 items/s · truthfulqa_mc2 0.412 (40/100)``: the live field of the bar."""
        rate = self.n_since / max(time.perf_counter() - self.t0, 1e-9)
        out = f"{rate:.1f} items/s"
        if self.current is not None:
            recs = self.records[self.current]
            score = self.tasks[self.current].score(recs)
            out += f" · {self.current} {score:.3f} ({len(recs)}/{len(self.chosen[self.current][0])})"
        return out
