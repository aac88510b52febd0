"""Learning-rate schedules, including one warm-up + cosine curve shared by several stages.

IDEA Prune (arXiv 2503.05920) trains the enlarged model, prunes it and recovers it under *one* cosine
annealing schedule: re-warming the LR after pruning destroys what the enlarged model learned. Stages therefore
declare step budgets and the run maps (stage, local step) → global step → LR multiplier. All functions are pure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_align.errors import ConfigError


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up from 0 to 1 over `warmup_steps`, then cosine from 1 down to `min_lr_ratio`.

    Steps past `total_steps` stay at `min_lr_ratio`; the curve is continuous at the end of warm-up.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class StageSpan:
    """Where one stage sits on the run-wide step axis: global steps `[start, end)`."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class RunSchedule:
    """One warm-up + cosine over the summed step budgets of the stages that share it, in run order.

    `budgets` maps stage name → optimizer steps of that stage (dict order is run order). The global step of a
    stage's local step is the sum of the budgets before it plus the local step; nothing else is stored.
    """

    budgets: dict[str, int]
    warmup_steps: int
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ConfigError("budgets", "needs at least one stage with a step budget")
        for name, steps in self.budgets.items():
            if not isinstance(steps, int) or steps <= 0:
                raise ConfigError(f"budgets.{name}", f"must be a positive integer, got {steps!r}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ConfigError(
                "warmup_steps",
                f"must be in [0, {self.total_steps}) (the summed budgets), got {self.warmup_steps}",
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")

    @property
    def total_steps(self) -> int:
        return sum(self.budgets.values())

    def spans(self) -> list[StageSpan]:
        """The stages' global step ranges, in run order (the report marks these boundaries)."""
        spans, start = [], 0
        for name, steps in self.budgets.items():
            spans.append(StageSpan(name, start, start + steps))
            start += steps
        return spans

    def global_step(self, stage: str, local_step: int) -> int:
        """Global step of `local_step` within `stage`; a stage that runs past its budget keeps counting."""
        for span in self.spans():
            if span.name == stage:
                return span.start + local_step
        raise ConfigError("schedule.stage", f"'{stage}' is not one of the scheduled stages {list(self.budgets)}")

    def multiplier(self, stage: str, local_step: int) -> float:
        """LR multiplier of `local_step` within `stage` on the run-wide curve."""
        step = self.global_step(stage, local_step)
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)

    def curve(self) -> list[float]:
        """Multiplier at every global step of the run (for plots and tests)."""
        total, warmup, floor = self.total_steps, self.warmup_steps, self.min_lr_ratio
        return [warmup_cosine(s, total, warmup, floor) for s in range(total)]
