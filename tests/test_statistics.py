"""benchmarks/statistics.py against values worked by hand or read from standard t tables."""
from __future__ import annotations

import math

import pytest

from benchmarks.statistics import compare, mean_interval, paired_t_p, sign_flip_p, t_cdf, t_quantile


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)])
def test_t_quantile_matches_the_table(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-3)


def test_t_cdf_has_the_closed_form_for_two_degrees_of_freedom() -> None:
    for x in (-3.0, 0.5, 3.4641):
        assert t_cdf(x, 2) == pytest.approx(0.5 + x / (2 * math.sqrt(2 + x * x)), abs=1e-9)


def test_t_interval_of_one_to_five() -> None:
    # mean 3, sd sqrt(2.5), se 0.70711, t(0.975, 4) 2.77645 -> half-width 1.96324
    interval = mean_interval([1, 2, 3, 4, 5])
    assert (interval.mean, interval.method) == (3, "t")
    assert (interval.low, interval.high) == pytest.approx((1.03676, 4.96324), abs=1e-4)


def test_one_value_has_no_interval_and_many_use_the_bootstrap() -> None:
    single = mean_interval([2.0])
    assert single.method == "n/a" and single.covers(0.0)
    many = mean_interval([float(i % 7) for i in range(60)])
    assert many.method == "bootstrap" and many.low < many.mean < many.high


def test_paired_t_p_by_hand() -> None:
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3) = 2 sqrt 3, df 2: p = 1 - 2 sqrt 3 / sqrt 14
    assert paired_t_p([1, 2, 3]) == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), abs=1e-6)
    assert math.isnan(paired_t_p([1.0]))


def test_exact_sign_flip_p_by_hand() -> None:
    assert sign_flip_p([1, 2, 3]) == pytest.approx(2 / 8)  # only all-plus and all-minus reach |sum| 6
    assert sign_flip_p([1, -1, 3]) == pytest.approx(6 / 8)  # |sum| >= 3: 5, 3, 3 and their mirrors
    assert sign_flip_p([0.5, 0.5]) == pytest.approx(2 / 4)  # two seeds can never go below 1/2


def test_verdicts_follow_the_interval_of_the_paired_difference() -> None:
    base = [10.0, 11.0, 12.0, 13.0, 14.0]
    better = [b - 1 - 0.01 * i for i, b in enumerate(base)]
    assert compare(better, base, lower_is_better=True).verdict == "holds"
    assert compare(better, base, lower_is_better=False).verdict == "does not hold"
    noisy = [b + d for b, d in zip(base, (1, -1, 0.5, -0.5, 0.1))]
    result = compare(noisy, base, lower_is_better=True)
    assert result.verdict == "inconclusive at this scale" and result.difference.covers(0.0)
    with pytest.raises(ValueError):
        compare([1.0], [1.0, 2.0], lower_is_better=True)
