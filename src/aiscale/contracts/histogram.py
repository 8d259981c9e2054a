"""A fixed-bucket histogram: the bounded-memory, mergeable summary the rollout analysis reads.

Latencies and custom metric samples (feedback scores, output divergence, ...) reach the analysis
as ``Histogram`` values rather than raw samples, so memory stays bounded however long a step
runs, two gateways' histograms add up exactly (``merge``), and Prometheus-style cumulative
``le`` buckets convert directly. Bucket ``i`` holds values ``v`` with
``upper_bounds[i-1] < v <= upper_bounds[i]``; the first bucket is open below and one extra last
bucket holds values above the last bound. Quantiles are interpolated inside a bucket, so their
error is at most one bucket width (about 5 % with ``latency_histogram()``'s log-spaced buckets).

This module never does I/O and never reads a clock.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from aiscale.errors import InvalidInput

__all__ = ["Histogram", "latency_histogram"]


@dataclass(frozen=True, slots=True)
class Histogram:
    """Counts of values per bucket, plus their exact sum (for the mean).

    ``counts`` has ``len(upper_bounds) + 1`` entries (the last one is the overflow bucket).
    Raises ``InvalidInput`` when the bounds are not strictly increasing and finite or the counts
    do not fit them.
    """

    upper_bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float = 0.0

    def __post_init__(self) -> None:
        bounds = self.upper_bounds
        _check_bounds(bounds)
        if len(self.counts) != len(bounds) + 1:
            raise InvalidInput(
                f"a histogram with {len(bounds)} bounds needs {len(bounds) + 1} counts, "
                f"not {len(self.counts)}",
                field="counts",
            )
        if min(self.counts) < 0:
            raise InvalidInput("histogram counts must be non-negative", field="counts")
        if not math.isfinite(self.total):
            raise InvalidInput("histogram total must be finite", field="total")

    @classmethod
    def empty(cls, upper_bounds: Sequence[float]) -> Histogram:
        """An empty histogram over these bucket bounds."""
        bounds = tuple(float(b) for b in upper_bounds)
        return cls(bounds, (0,) * (len(bounds) + 1), 0.0)

    @classmethod
    def log_spaced(cls, min_value: float, max_value: float, growth: float) -> Histogram:
        """Empty, with bounds ``min_value * growth**k`` up to at least ``max_value``."""
        if not 0 < min_value < max_value or not growth > 1:
            raise InvalidInput(
                "log-spaced bounds need 0 < min_value < max_value and growth > 1", field="growth"
            )
        num = math.ceil(math.log(max_value / min_value) / math.log(growth)) + 1
        return cls.empty([min_value * growth**k for k in range(num)])

    @classmethod
    def linear(cls, start: float, stop: float, num_bounds: int) -> Histogram:
        """Empty, with ``num_bounds`` evenly spaced bounds from ``start`` to ``stop``."""
        if num_bounds < 1 or (num_bounds > 1 and not start < stop):
            raise InvalidInput("linear bounds need start < stop and num_bounds >= 1", field="stop")
        if num_bounds == 1:
            return cls.empty([start])
        step = (stop - start) / (num_bounds - 1)
        return cls.empty([start + k * step for k in range(num_bounds)])

    @property
    def num_samples(self) -> int:
        """How many values were recorded."""
        return sum(self.counts)

    def with_samples(self, values: npt.ArrayLike) -> Histogram:
        """A new histogram with ``values`` added (this one is unchanged)."""
        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            return self
        if not np.all(np.isfinite(array)):
            raise InvalidInput("histogram samples must be finite", field="values")
        index = np.searchsorted(np.asarray(self.upper_bounds), array, side="left")
        added = np.bincount(index, minlength=len(self.counts))
        counts = np.asarray(self.counts, dtype=np.int64) + added
        return Histogram(self.upper_bounds, tuple(counts.tolist()), self.total + float(array.sum()))

    def merge(self, other: Histogram) -> Histogram:
        """The sum of two histograms with the same bounds (``InvalidInput`` otherwise)."""
        if other.upper_bounds != self.upper_bounds:
            raise InvalidInput(
                "cannot merge histograms with different bounds", field="upper_bounds"
            )
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return Histogram(self.upper_bounds, counts, self.total + other.total)

    def mean(self) -> float:
        """The exact mean of the recorded values; NaN when empty."""
        num = self.num_samples
        return self.total / num if num else math.nan

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0 < q < 1), interpolated linearly inside its bucket.

        A quantile in the first bucket reads as the first bound, one in the overflow bucket as
        the last bound (a lower bound of the truth). NaN when empty.
        """
        if not 0.0 < q < 1.0:
            raise InvalidInput(f"quantile must be within (0, 1), not {q!r}", field="q")
        num = self.num_samples
        if num == 0:
            return math.nan
        rank = q * num
        bounds = self.upper_bounds
        seen = 0
        for index, count in enumerate(self.counts):
            if count and seen + count >= rank:
                if index == 0:
                    return bounds[0]
                if index == len(bounds):
                    return bounds[-1]
                lower, upper = bounds[index - 1], bounds[index]
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
        return bounds[-1]


@functools.cache
def latency_histogram() -> Histogram:
    """An empty latency histogram in seconds: 0.5 ms to 120 s, buckets 5 % apart (256 bounds).

    Every call returns the same (immutable) value, so histograms from anywhere merge.
    """
    return Histogram.log_spaced(0.0005, 120.0, 1.05)


@functools.lru_cache(maxsize=64)
def _check_bounds(bounds: tuple[float, ...]) -> None:
    """Raise unless ``bounds`` are finite and strictly increasing (cached: histograms of one
    layout are built many times, their bounds checked once)."""
    if not bounds:
        raise InvalidInput("a histogram needs at least one bound", field="upper_bounds")
    if not all(math.isfinite(b) for b in bounds) or any(
        b >= c for b, c in zip(bounds, bounds[1:], strict=False)
    ):
        raise InvalidInput(
            "histogram bounds must be finite and strictly increasing", field="upper_bounds"
        )
