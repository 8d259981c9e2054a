"""Fixed-horizon intervals and tests behind the A/B report (``report.py``).

The canary analysis (``analysis.py``, ``_stats.py``) answers "is the canary worse, yet?" with
always-valid one-sided tests; the report answers "what do the numbers look like now, and how
sure are we?" with two-sided intervals and p-values computed once, on the counts as they are.
Where the two share a statistic it lives in ``_stats`` and is reused here: the pooled
two-proportion z comes from ``proportion_evidence`` and the tie-corrected Mann-Whitney z on
bucketed latencies from ``rank_evidence``.

What this module adds:

* ``wilson_interval``: Wilson score interval for a proportion (Wilson 1927); it stays inside
  [0, 1] and keeps its coverage for rare events, where the Wald interval does not.
* ``newcombe_interval``: Newcombe's hybrid score interval for a difference of two independent
  proportions (Newcombe 1998, method 10), built from the two Wilson intervals.
* ``quantile_interval``: the distribution-free order-statistic interval for a quantile: the
  ranks ``l`` and ``u`` are the binomial(n, q) quantiles at ``alpha / 2`` and ``1 - alpha / 2``,
  so ``P(X_(l) <= xi_q <= X_(u)) >= 1 - alpha`` whatever the distribution. On a histogram the
  order statistics are read with the same in-bucket linear interpolation as
  ``Histogram.quantile``. A lower end in the first bucket (open below) reads as 0 when its bound
  is positive (latencies are not negative), else ``-inf``; an upper end in the overflow bucket
  reads as ``inf``.
* ``welch_difference``: difference of two means with a normal interval and z-test, for
  metrics whose standard deviations are known.

This module never does I/O, never reads a clock and never uses randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from scipy.special import bdtr

from aiscale.contracts.histogram import Histogram
from aiscale.rollout._stats import proportion_evidence, rank_evidence

__all__ = [
    "ERROR_RATE_TEST",
    "LATENCY_TEST",
    "METRIC_TEST",
    "Interval",
    "SignificanceTest",
    "binomial_quantile",
    "error_rate_test",
    "latency_rank_test",
    "newcombe_interval",
    "quantile_interval",
    "two_sided_p",
    "welch_difference",
    "wilson_interval",
    "z_value",
]

ERROR_RATE_TEST = "two-proportion z-test (pooled variance, two-sided)"
LATENCY_TEST = (
    "Mann-Whitney U (normal approximation, tie-corrected on histogram buckets, two-sided)"
)
METRIC_TEST = "Welch z-test on means (normal approximation, two-sided)"

_STANDARD_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class Interval:
    """A closed interval ``[low, high]``; an open end is ``-inf`` or ``inf``."""

    low: float
    high: float

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside (ends included)."""
        return self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class SignificanceTest:
    """A test that was run: its name, its standardised statistic and its two-sided p-value."""

    name: str
    statistic: float
    p_value: float


def z_value(confidence: float) -> float:
    """The two-sided standard normal critical value for ``confidence`` (1.96 for 0.95)."""
    return _STANDARD_NORMAL.inv_cdf(0.5 + confidence / 2.0)


def two_sided_p(z: float) -> float:
    """The two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def wilson_interval(num_hits: int, num_trials: int, confidence: float) -> Interval:
    """Wilson score interval for ``num_hits / num_trials`` (``num_trials`` > 0)."""
    z = z_value(confidence)
    n = float(num_trials)
    p = num_hits / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    # At p = 0 (p = 1) the low (high) end is exactly 0 (1) in exact arithmetic; rounding could
    # leave it a hair off, with the estimate then outside its own interval.
    low = 0.0 if num_hits == 0 else max(0.0, centre - half)
    high = 1.0 if num_hits == num_trials else min(1.0, centre + half)
    return Interval(low, high)


def newcombe_interval(
    hits_baseline: int, num_baseline: int, hits_other: int, num_other: int, confidence: float
) -> Interval:
    """Newcombe hybrid score interval for ``other rate - baseline rate``."""
    p1 = hits_baseline / num_baseline
    p2 = hits_other / num_other
    w1 = wilson_interval(hits_baseline, num_baseline, confidence)
    w2 = wilson_interval(hits_other, num_other, confidence)
    difference = p2 - p1
    low = difference - math.hypot(p2 - w2.low, w1.high - p1)
    high = difference + math.hypot(w2.high - p2, p1 - w1.low)
    return Interval(low, high)


def error_rate_test(
    hits_baseline: int, num_baseline: int, hits_other: int, num_other: int
) -> SignificanceTest:
    """Pooled two-proportion z-test; p = 1 when neither version has any hit (nothing differs)."""
    evidence = proportion_evidence(num_baseline, hits_baseline, num_other, hits_other)
    z = evidence.z
    return SignificanceTest(ERROR_RATE_TEST, z, two_sided_p(z))


def latency_rank_test(baseline: Histogram, other: Histogram) -> tuple[SignificanceTest, float]:
    """Mann-Whitney U on two histograms with the same bounds, and ``P(other > baseline)``.

    The probability of superiority counts a tie (same bucket) as half; 0.5 means neither is
    slower. Both histograms must be non-empty.
    """
    evidence = rank_evidence(baseline.counts, other.counts)
    z = evidence.z
    # rank_evidence's score / information is its estimate of P(other > baseline) - 1/2.
    superiority = 0.5 + (evidence.score / evidence.information if evidence.information else 0.0)
    return SignificanceTest(LATENCY_TEST, z, two_sided_p(z)), superiority


def welch_difference(
    mean_baseline: float,
    std_baseline: float,
    num_baseline: int,
    mean_other: float,
    std_other: float,
    num_other: int,
    confidence: float,
) -> tuple[float, Interval, SignificanceTest]:
    """``other mean - baseline mean`` with a normal interval and z-test (unequal variances)."""
    difference = mean_other - mean_baseline
    se = math.sqrt(std_baseline**2 / num_baseline + std_other**2 / num_other)
    if se == 0.0:
        z = 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
        return (
            difference,
            Interval(difference, difference),
            SignificanceTest(METRIC_TEST, z, two_sided_p(z)),
        )
    half = z_value(confidence) * se
    z = difference / se
    return (
        difference,
        Interval(difference - half, difference + half),
        SignificanceTest(METRIC_TEST, z, two_sided_p(z)),
    )


def quantile_interval(histogram: Histogram, q: float, confidence: float) -> Interval:
    """Order-statistic interval for the ``q``-quantile of the values behind ``histogram``.

    Needs a non-empty histogram. See the module docstring for the method and its open ends.
    """
    n = histogram.num_samples
    alpha = 1.0 - confidence
    # 1-based ranks: P(l <= B <= u - 1) >= 1 - alpha for B ~ Binomial(n, q).
    low_rank = binomial_quantile(alpha / 2.0, n, q)
    high_rank = binomial_quantile(1.0 - alpha / 2.0, n, q) + 1
    low = _value_at_rank(histogram, low_rank, is_upper=False) if low_rank >= 1 else 0.0
    high = _value_at_rank(histogram, high_rank, is_upper=True) if high_rank <= n else math.inf
    return Interval(low, high)


def binomial_quantile(probability: float, num_trials: int, q: float) -> int:
    """The smallest ``k`` with ``P(Binomial(num_trials, q) <= k) >= probability``.

    A bisection on scipy's binomial CDF (``scipy.special.bdtr``): the same value as
    ``scipy.stats.binom.ppf`` without importing ``scipy.stats`` (half a second at start-up).
    """
    low, high = 0, num_trials
    while low < high:
        middle = (low + high) // 2
        # The tolerance keeps exact ties (P(X <= 15) = 1/2 for n = 31, q = 1/2, which bdtr
        # rounds to 0.4999999999999997) on the side exact arithmetic puts them.
        if float(bdtr(middle, num_trials, q)) >= probability * (1.0 - 1e-12):
            high = middle
        else:
            low = middle + 1
    return low


def _value_at_rank(histogram: Histogram, rank: int, *, is_upper: bool) -> float:
    """The ``rank``-th smallest value (1-based), interpolated inside its bucket."""
    bounds = histogram.upper_bounds
    seen = 0
    for index, count in enumerate(histogram.counts):
        if count and seen + count >= rank:
            if index == len(bounds):  # overflow: only its lower end is known
                return math.inf if is_upper else bounds[-1]
            upper = bounds[index]
            if index == 0:  # open below: latencies are not negative, anything else may be
                if is_upper:
                    return upper
                return 0.0 if upper > 0.0 else -math.inf
            lower = bounds[index - 1]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return math.inf if is_upper else bounds[-1]
