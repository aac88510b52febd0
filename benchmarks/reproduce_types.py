"""What ``python -m benchmarks.reproduce`` hands every claim and what a claim hands back."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Scale:
    """The run's mode and seeds; ``out`` keeps the runs (trained models are reused by a rerun)."""

    quick: bool
    seeds: int
    out: Path
    model: Path | None = None
    steps: int | None = None  # total optimizer steps per arm where a claim trains (None: the claim's mode default)
    corpus: Path | None = None  # a local training corpus for the claims that pretrain (None: the embedded one)


@dataclass(frozen=True)
class ClaimResult:
    """One value per seed for every arm (same seed order in every arm, so arms pair up by position), the wall
    seconds each arm took over all seeds, the (claimed better, other) pairs to test, and how it was run.
    ``per_round`` (claims that run rounds): per arm, per seed, one row of metrics per round (a "round" key, None
    where a value could not be measured); the page shows their means per arm and round. ``findings``: sentences the
    claim measured beside its value (what would explain a verdict), shown under the comparisons; ``notes``: what the
    run left out."""

    values: dict[str, list[float]]
    seconds: dict[str, float]
    comparisons: list[tuple[str, str]]
    setup: str
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    reused: dict[str, int] = field(default_factory=dict)  # per arm, reused runs of unknown time (not in seconds)
    per_round: dict[str, list[list[dict[str, float | None]]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A claim of a method's paper or issue as this project can test it.

    ``if_not`` is what the page says when the claim does not hold or stays inconclusive: the most likely reason at
    this scale and the experiment that would test it.
    """

    name: str
    statement: str
    metric: str
    lower_is_better: bool
    if_not: str
    run: Callable[[Scale], ClaimResult]
