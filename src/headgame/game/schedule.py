"""The three-phase λ schedule of GAME-LoRA (docs/formulas.md#schedule)."""

from __future__ import annotations

from enum import Enum

WARMUP_END = 0.02  # docs/formulas.md#schedule [S][B]
COOLDOWN_START = 0.879  # docs/formulas.md#schedule [S][B]


class Schedule(str, Enum):
    THREE_PHASE = "three_phase"
    CONSTANT = "constant"


def lambda_scale(
    progress: float,
    schedule: Schedule | str = Schedule.THREE_PHASE,
    warmup_end: float = WARMUP_END,
    cooldown_start: float = COOLDOWN_START,
) -> float:
    """s(p): linear warm-up to 1 until ``warmup_end``, 1 until ``cooldown_start``, then linear to 0.

    ``progress`` p = step / total_steps in [0, 1] (optimizer steps). The constant schedule is the
    "schedule off" ablation (docs/formulas.md#ablations): s ≡ 1.
    """
    if Schedule(schedule) is Schedule.CONSTANT:
        return 1.0
    p = min(max(float(progress), 0.0), 1.0)
    if p < warmup_end:
        return p / warmup_end
    if p < cooldown_start:
        return 1.0
    return max(0.0, (1.0 - p) / (1.0 - cooldown_start))
