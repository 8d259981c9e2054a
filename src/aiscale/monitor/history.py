"""Metric history: an embedded, bounded time-series store with tiered downsampling.

What it does: keeps one series per ``(name, labels)`` and folds every appended point
``(t_s, value)`` into each resolution tier at once (by default 1 s kept for 1 h, 10 s for 24 h,
5 min for 30 days). A tier bucket keeps ``count``, ``sum``, ``min``, ``max`` and ``last``, so an
average is ``sum / count`` and a total (of per-interval increments) is ``sum`` at every tier:
downsampling never turns rates or averages into averages of averages. ``query`` reads the finest
tier that still covers the start of the range; steps finer than that tier come back at the
tier's resolution (a step with no bucket start is left out, never filled in).
``MetricsStore`` is the small protocol a Prometheus HTTP API reader implements for the
scale-out case (DESIGN.md principle 2).

What it must never do: read a clock (times arrive as ``t_s``), do I/O, or grow without bound:
each tier holds at most ``retention_s / step_s`` buckets per series and the store holds at most
``max_series`` series (a new one beyond that raises ``Overloaded``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from aiscale.errors import ConfigError, InvalidInput, Overloaded

__all__ = [
    "Aggregation",
    "DEFAULT_TIERS",
    "InMemoryMetricsStore",
    "Labels",
    "MetricsStore",
    "SeriesKey",
    "Tier",
    "labels_key",
]

#: Labels as a sorted tuple of ``(name, value)`` pairs: hashable and order-free.
Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]
#: How points inside one output step (and across matching series) combine.
#: ``avg`` = sum/count, ``sum`` = total of the values (for per-interval increments),
#: ``rate`` = sum / step_s, ``min``/``max``/``count``, ``last`` = the latest value (summed
#: across series, as for gauges such as queue depth per replica).
Aggregation = Literal["avg", "sum", "rate", "min", "max", "count", "last"]
_AGGREGATIONS = ("avg", "sum", "rate", "min", "max", "count", "last")


def labels_key(labels: Mapping[str, str] | Labels | None) -> Labels:
    """The canonical (sorted tuple) form of a label set."""
    if labels is None:
        return ()
    items = labels.items() if isinstance(labels, Mapping) else labels
    return tuple(sorted((str(k), str(v)) for k, v in items))


@dataclass(frozen=True, slots=True)
class Tier:
    """One resolution: buckets of ``step_s`` seconds kept for ``retention_s`` seconds."""

    step_s: float
    retention_s: float

    def __post_init__(self) -> None:
        if self.step_s <= 0 or self.retention_s < self.step_s:
            raise ConfigError("need step_s > 0 and retention_s >= step_s", field="tiers")

    @property
    def num_buckets(self) -> int:
        return math.ceil(self.retention_s / self.step_s)


DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier(1.0, 3600.0),
    Tier(10.0, 86_400.0),
    Tier(300.0, 30 * 86_400.0),
)


class MetricsStore(Protocol):
    """Where the monitor keeps and reads metric history (in process, or Prometheus)."""

    def append(self, name: str, labels: Mapping[str, str] | Labels, t_s: float,
               value: float) -> None:
        """Record one point. Raises ``InvalidInput`` for a non-finite value or a time older
        than the series' latest point."""
        ...

    def query(self, name: str, labels_filter: Mapping[str, str] | None, start_s: float,
              end_s: float, step_s: float, agg: Aggregation = "avg") -> list[tuple[float, float]]:
        """``(step_start_s, value)`` for each step in ``[start_s, end_s)`` that has data,
        combining every series of ``name`` whose labels include ``labels_filter``."""
        ...

    def series(self, name: str, labels_filter: Mapping[str, str] | None = None) -> list[Labels]:
        """The label sets stored for ``name`` that include ``labels_filter``."""
        ...


class _Bucket:
    """Aggregate of the points whose time falls in ``[index * step_s, (index + 1) * step_s)``."""

    __slots__ = ("index", "count", "total", "low", "high", "last")

    def __init__(self, index: int, value: float) -> None:
        self.index = index
        self.count = 1
        self.total = value
        self.low = value
        self.high = value
        self.last = value

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.last = value


class _Series:
    __slots__ = ("last_t_s", "tiers")

    def __init__(self, num_tiers: int) -> None:
        self.last_t_s = -math.inf
        self.tiers: list[deque[_Bucket]] = [deque() for _ in range(num_tiers)]


class InMemoryMetricsStore:
    """The embedded ``MetricsStore``. Not thread-safe: one owner (the monitor loop) writes."""

    def __init__(self, tiers: Sequence[Tier] = DEFAULT_TIERS, *, max_series: int = 10_000) -> None:
        if not tiers:
            raise ConfigError("at least one tier is needed", field="tiers")
        ordered = sorted(tiers, key=lambda t: t.step_s)
        if max_series < 1:
            raise ConfigError("must be >= 1", field="max_series")
        self.tiers: tuple[Tier, ...] = tuple(ordered)
        self.max_series = max_series
        self._series: dict[SeriesKey, _Series] = {}

    @property
    def num_series(self) -> int:
        return len(self._series)

    def append(self, name: str, labels: Mapping[str, str] | Labels, t_s: float,
               value: float) -> None:
        if not (math.isfinite(t_s) and math.isfinite(value)):
            raise InvalidInput(f"{name}: time and value must be finite", field="value")
        key = (name, labels_key(labels))
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:
                raise Overloaded(f"metrics store is full ({self.max_series} series)",
                                 retry_after_s=60.0, field="max_series")
            series = self._series[key] = _Series(len(self.tiers))
        if t_s < series.last_t_s:
            raise InvalidInput(f"{name}: point at {t_s} is older than the latest "
                               f"({series.last_t_s})", field="t_s")
        series.last_t_s = t_s
        for tier, buckets in zip(self.tiers, series.tiers, strict=True):
            index = math.floor(t_s / tier.step_s)
            if buckets and buckets[-1].index == index:
                buckets[-1].add(value)
            else:
                buckets.append(_Bucket(index, value))
            # Retention: the newest bucket's index minus num_buckets bounds what is kept, so
            # a tier never holds more than num_buckets buckets, whatever the gaps.
            oldest = index - tier.num_buckets + 1
            while buckets[0].index < oldest:
                buckets.popleft()

    def extend(self, points: Iterable[tuple[str, Mapping[str, str] | Labels, float, float]]) -> int:
        """Append many ``(name, labels, t_s, value)`` points; returns how many."""
        n = 0
        for name, labels, t_s, value in points:
            self.append(name, labels, t_s, value)
            n += 1
        return n

    def series(self, name: str, labels_filter: Mapping[str, str] | None = None) -> list[Labels]:
        wanted = labels_key(labels_filter)
        return sorted(lbls for (n, lbls) in self._series
                      if n == name and set(wanted) <= set(lbls))

    def latest_t_s(self, name: str, labels: Mapping[str, str] | Labels) -> float | None:
        """Time of the latest point of one series, or None when it is not stored."""
        series = self._series.get((name, labels_key(labels)))
        return None if series is None else series.last_t_s

    def tier_for(self, name: str, start_s: float) -> Tier:
        """The tier a query from ``start_s`` reads: the finest whose retention still reaches
        back to ``start_s`` relative to the newest point of ``name`` (else the coarsest).
        Every tier holds exact sums and counts, so a finer tier only adds resolution."""
        latest = max((s.last_t_s for (n, _), s in self._series.items() if n == name),
                     default=start_s)
        for tier in self.tiers:
            # The oldest bucket this tier can still hold.
            horizon = (math.floor(latest / tier.step_s) - tier.num_buckets + 1) * tier.step_s
            if horizon <= start_s:
                return tier
        return self.tiers[-1]

    def query(self, name: str, labels_filter: Mapping[str, str] | None, start_s: float,
              end_s: float, step_s: float, agg: Aggregation = "avg") -> list[tuple[float, float]]:
        """Steps are aligned to multiples of ``step_s``: step ``k`` covers
        ``[k * step_s, (k + 1) * step_s)``, and a bucket joins the step holding its start.
        Raises ``InvalidInput`` for ``step_s <= 0``, ``end_s < start_s`` or an unknown ``agg``."""
        if step_s <= 0 or end_s < start_s:
            raise InvalidInput("need step_s > 0 and end_s >= start_s", field="step_s")
        if agg not in _AGGREGATIONS:
            raise InvalidInput(f"unknown aggregation {agg!r}", field="agg")
        tier = self.tier_for(name, start_s)
        tier_index = self.tiers.index(tier)
        # Per step: count, sum, min, max, and sum over series of each series' last value.
        acc: dict[int, list[float]] = {}
        for lbls in self.series(name, labels_filter):
            last_by_step: dict[int, float] = {}
            for bucket in self._series[(name, lbls)].tiers[tier_index]:
                b_start = bucket.index * tier.step_s
                if b_start < start_s or b_start >= end_s:
                    continue
                k = math.floor(b_start / step_s + 1e-9)
                a = acc.get(k)
                if a is None:
                    acc[k] = [bucket.count, bucket.total, bucket.low, bucket.high, 0.0]
                else:
                    a[0] += bucket.count
                    a[1] += bucket.total
                    a[2] = min(a[2], bucket.low)
                    a[3] = max(a[3], bucket.high)
                last_by_step[k] = bucket.last
            for k, last in last_by_step.items():
                acc[k][4] += last
        out: list[tuple[float, float]] = []
        for k in sorted(acc):
            count, total, low, high, last = acc[k]
            value = {
                "avg": total / count,
                "sum": total,
                "rate": total / step_s,
                "min": low,
                "max": high,
                "count": count,
                "last": last,
            }[agg]
            out.append((k * step_s, value))
        return out
