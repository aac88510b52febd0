"""Seed statistics for the reproduction page: means with 95% intervals, paired tests, and a plain verdict.

Pure Python (no SciPy on the target machines): the Student t distribution is integrated numerically, which is exact
to well under the printed digits for the small degrees of freedom seeds give. Intervals are t-intervals up to
``BOOTSTRAP_FROM`` values and percentile bootstraps from there (with many seeds the normality assumption is the weaker
one). Paired tests work on per-seed differences, so seed-to-seed variation shared by both arms cancels out.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from statistics import fmean, stdev
from typing import Literal, Sequence

LEVEL = 0.95
BOOTSTRAP_FROM = 30      # values; below this a t-interval
EXACT_SIGN_FLIPS_UP_TO = 16  # pairs; 2^16 sign patterns enumerated, above that a seeded Monte Carlo sample
MONTE_CARLO_FLIPS = 20000

Verdict = Literal["holds", "does not hold", "inconclusive at this scale"]


def t_density(x: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) by Simpson's rule on arctan-substituted bounds (x = tan u keeps the heavy df=1 tail finite)."""
    if x < 0:
        return 1 - t_cdf(-x, df)
    top, steps = math.atan(x), 2000
    width = top / steps
    f = [t_density(math.tan(u), df) / math.cos(u) ** 2 for u in (k * width for k in range(steps + 1))]
    area = width / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    return 0.5 + area


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student t with ``df`` degrees of freedom, by bisection on ``t_cdf``."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    method: str  # "t", "bootstrap" or "n/a" (one value: no interval)

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def mean_interval(values: Sequence[float], level: float = LEVEL, seed: int = 0) -> Interval:
    """Mean and ``level`` confidence interval: t-interval for few values, percentile bootstrap for many."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = fmean(values)
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1, "n/a")
    if n < BOOTSTRAP_FROM:
        half = t_quantile(1 - (1 - level) / 2, n - 1) * stdev(values) / math.sqrt(n)
        return Interval(mean, mean - half, mean + half, n, "t")
    rng = random.Random(seed)
    means = sorted(fmean(rng.choices(values, k=n)) for _ in range(4000))
    tail = (1 - level) / 2
    return Interval(mean, means[int(tail * len(means))], means[int((1 - tail) * len(means)) - 1], n, "bootstrap")


def paired_t_p(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test (H0: mean difference 0); NaN below two pairs, 0 or 1 with no spread."""
    n = len(differences)
    if n < 2:
        return math.nan
    spread = stdev(differences)
    mean = fmean(differences)
    if spread == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (spread / math.sqrt(n))
    return 2 * (1 - t_cdf(abs(t), n - 1))


def sign_flip_p(differences: Sequence[float], seed: int = 0) -> float:
    """Two-sided permutation p-value: the share of sign patterns whose mean is at least as far from 0 as the observed
    one (exact enumeration for small n, so with n pairs it can never go below 2 / 2^n)."""
    n = len(differences)
    if n == 0:
        return math.nan
    observed = abs(fmean(differences)) - 1e-12
    if n <= EXACT_SIGN_FLIPS_UP_TO:
        patterns = itertools.product((1, -1), repeat=n)
        hits = total = 0
        for signs in patterns:
            total += 1
            hits += abs(fmean(s * d for s, d in zip(signs, differences))) >= observed
        return hits / total
    rng = random.Random(seed)
    hits = sum(abs(fmean(rng.choice((1, -1)) * d for d in differences)) >= observed for _ in range(MONTE_CARLO_FLIPS))
    return (hits + 1) / (MONTE_CARLO_FLIPS + 1)


@dataclass(frozen=True)
class PairedResult:
    """Arm ``a`` against arm ``b`` over the same seeds; ``difference`` is a - b."""

    a: Interval
    b: Interval
    difference: Interval
    t_p: float
    sign_flip_p: float
    verdict: Verdict


def compare(a: Sequence[float], b: Sequence[float], lower_is_better: bool) -> PairedResult:
    """Paired comparison of the claim "a beats b": it holds when the whole interval of a - b lies on a's better side,
    does not hold when it lies wholly on the other side, and is inconclusive when the interval covers 0."""
    if len(a) != len(b):
        raise ValueError(f"paired arms need one value per seed each, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b)]
    diff = mean_interval(differences)
    if diff.covers(0.0):
        verdict: Verdict = "inconclusive at this scale"
    else:
        better = diff.high < 0 if lower_is_better else diff.low > 0
        verdict = "holds" if better else "does not hold"
    return PairedResult(mean_interval(a), mean_interval(b), diff, paired_t_p(differences), sign_flip_p(differences),
                        verdict)
