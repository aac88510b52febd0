"""The shared warm-up + cosine schedule: values, continuity across stage boundaries, a single warm-up."""
from __future__ import annotations

import math

import pytest

from lightning_align.algorithms.schedule import RunSchedule, warmup_cosine
from lightning_align.errors import ConfigError

CASES = [
    ({"enlarge": 40, "prune": 25, "recover": 35}, 10, 0.1),
    ({"enlarge": 7, "prune": 3, "recover": 11}, 1, 0.0),
    ({"a": 1, "b": 1, "c": 50}, 0, 0.5),
    ({"only": 100}, 99, 0.2),
    ({"enlarge": 300, "prune": 150, "recover": 150}, 30, 0.05),
]


def test_warmup_cosine_hand_values() -> None:
    assert warmup_cosine(0, 110, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 110, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 110, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 110, 10, 0.1) == pytest.approx(0.55)  # half-way: 0.1 + 0.9 * 0.5
    assert warmup_cosine(110, 110, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 110, 10, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("budgets,warmup,floor", CASES)
def test_stages_continue_one_curve(budgets: dict[str, int], warmup: int, floor: float) -> None:
    schedule = RunSchedule(budgets, warmup, floor)
    stitched = [schedule.multiplier(name, k) for name, steps in budgets.items() for k in range(steps)]
    assert stitched == schedule.curve()
    names = list(budgets)
    for before, after in zip(names, names[1:]):
        # the first step of a stage is the step after the last one of the previous stage
        assert schedule.global_step(after, 0) == schedule.global_step(before, budgets[before] - 1) + 1


@pytest.mark.parametrize("budgets,warmup,floor", CASES)
def test_curve_is_continuous_with_one_warmup(budgets: dict[str, int], warmup: int, floor: float) -> None:
    curve = RunSchedule(budgets, warmup, floor).curve()
    total = len(curve)
    rising = [s for s in range(1, total) if curve[s] > curve[s - 1] + 1e-12]
    assert rising == list(range(1, warmup)), "the LR rises only during the single warm-up at the start"
    warm_jump = 1.0 / warmup if warmup else 0.0
    cos_jump = math.pi / 2 * (1.0 - floor) / max(total - warmup, 1)
    assert max(abs(b - a) for a, b in zip(curve, curve[1:])) <= max(warm_jump, cos_jump) + 1e-12
    assert min(curve[warmup:]) >= floor - 1e-12 and max(curve) <= 1.0 + 1e-12


def test_separate_schedules_rewarm() -> None:
    """The naive pipeline (a schedule per stage) rises again after pruning; the shared one never does."""
    naive = RunSchedule({"enlarge": 50}, 5).curve() + RunSchedule({"recover": 50}, 5).curve()
    assert naive[50] < naive[54] and naive[49] < naive[54]
    shared = RunSchedule({"enlarge": 50, "recover": 50}, 5).curve()
    assert all(b <= a for a, b in zip(shared[5:], shared[6:]))


def test_spans_mark_stage_boundaries() -> None:
    spans = RunSchedule({"enlarge": 40, "prune": 25, "recover": 35}, 10).spans()
    assert [(s.name, s.start, s.end) for s in spans] == [("enlarge", 0, 40), ("prune", 40, 65), ("recover", 65, 100)]


@pytest.mark.parametrize(
    "budgets,warmup,floor,key",
    [
        ({}, 0, 0.1, "budgets"),
        ({"enlarge": 0}, 0, 0.1, "budgets.enlarge"),
        ({"enlarge": 10}, 10, 0.1, "warmup_steps"),
        ({"enlarge": 10}, 1, 1.5, "min_lr_ratio"),
    ],
)
def test_bad_schedule_names_the_key(budgets: dict[str, int], warmup: int, floor: float, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        RunSchedule(budgets, warmup, floor)


def test_unknown_stage_names_the_stages() -> None:
    with pytest.raises(ConfigError, match="'sft' is not one of"):
        RunSchedule({"enlarge": 10}, 1).multiplier("sft", 0)

