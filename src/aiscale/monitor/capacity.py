"""Capacity-exhaustion warnings: when will the queue be full at this forecast or trend?

What it does: ``capacity_warning`` reads a ``Forecast`` against the request rate the current
replicas can serve and says when the queue saturates ("at this trend the queue is full in N
minutes"): the backlog grows by ``(rate - capacity) * step_s`` per bin and never goes below
empty. ``trend_warning`` does the same from a least-squares line through recent rates, for a
series without the history a seasonal forecast needs (or a ramp the season does not know).

What it must never do: read a clock (``now_s`` is passed in), do I/O or use randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiscale.errors import InvalidInput
from aiscale.monitor.forecast import Forecast

__all__ = [
    "IDLE_RATE_PER_S",
    "CapacityWarning",
    "capacity_warning",
    "is_arrival_rate_settling",
    "trend_warning",
]

#: Arrivals at or below this rate are "no load": nothing is about to saturate.
IDLE_RATE_PER_S = 0.1


def is_arrival_rate_settling(rates_per_s: Sequence[float]) -> bool:
    """Whether the latest observed rates say no queue is about to fill, whatever a forecast
    or a fitted line says: arrivals are about zero now (``IDLE_RATE_PER_S``), or fell at
    each of the last two points. After a load ends, a line fitted through its ramp still
    points up, and a season that learned the load expects it back; neither is a warning a
    reader can act on at 0 req/s."""
    if not rates_per_s:
        return False
    if rates_per_s[-1] <= IDLE_RATE_PER_S:
        return True
    return len(rates_per_s) >= 3 and rates_per_s[-1] < rates_per_s[-2] < rates_per_s[-3]


@dataclass(frozen=True, slots=True)
class CapacityWarning:
    """The queue is expected to be full at ``saturates_at_s`` (in ``saturates_in_s``), when
    arrivals reach ``rate_per_s`` against ``capacity_per_s``. ``basis``: what said so."""

    saturates_at_s: float
    saturates_in_s: float
    rate_per_s: float
    capacity_per_s: float
    basis: Literal["forecast", "forecast_upper", "trend"]


def _check_capacity(capacity_per_s: float, queue_free: float) -> None:
    if not capacity_per_s > 0:
        raise InvalidInput("capacity_per_s must be > 0", field="capacity_per_s")
    if queue_free < 0:
        raise InvalidInput("queue_free must be >= 0", field="queue_free")


def capacity_warning(forecast: Forecast, capacity_per_s: float, now_s: float, *,
                     queue_free: float = 0.0, use_upper: bool = False) -> CapacityWarning | None:
    """When the forecast arrivals overflow the queue, or None within the forecast's horizon.

    The queue gains ``(rate - capacity) * step_s`` per bin (never below empty); it saturates
    when that backlog exceeds ``queue_free`` requests (0: as soon as arrivals exceed capacity).
    ``use_upper`` reads the interval's upper bound instead of the point (the cautious choice
    before scaling up). Raises ``InvalidInput`` for capacity <= 0 or queue_free < 0.
    """
    _check_capacity(capacity_per_s, queue_free)
    backlog = 0.0
    for p in forecast.points:
        rate = p.upper_per_s if use_upper else p.rate_per_s
        excess = rate - capacity_per_s
        start = max(p.t_s, now_s)
        span = p.t_s + p.step_s - start
        if span <= 0:
            continue
        if excess > 0 and backlog + excess * span > queue_free:
            at = start + max(0.0, queue_free - backlog) / excess
            return CapacityWarning(at, at - now_s, rate, capacity_per_s,
                                   "forecast_upper" if use_upper else "forecast")
        backlog = max(0.0, backlog + excess * span)
    return None


def trend_warning(times_s: Sequence[float], rates_per_s: Sequence[float],
                  capacity_per_s: float, now_s: float, horizon_s: float, *,
                  queue_free: float = 0.0) -> CapacityWarning | None:
    """A least-squares line through recent ``(time, rate)`` points, extrapolated from
    ``now_s``: when its backlog above capacity exceeds ``queue_free``, if within
    ``horizon_s``; None while the latest rates are idle or falling
    (``is_arrival_rate_settling``). Raises ``InvalidInput`` for fewer than two points or
    mismatched lengths."""
    _check_capacity(capacity_per_s, queue_free)
    n = len(times_s)
    if n != len(rates_per_s) or n < 2:
        raise InvalidInput("need at least two (time, rate) points of equal count",
                           field="rates_per_s")
    if is_arrival_rate_settling(rates_per_s):
        return None
    mean_t = sum(times_s) / n
    mean_r = sum(rates_per_s) / n
    var_t = sum((t - mean_t) ** 2 for t in times_s)
    slope = (sum((t - mean_t) * (r - mean_r) for t, r in zip(times_s, rates_per_s, strict=True))
             / var_t) if var_t > 0 else 0.0
    rate_now = mean_r + slope * (now_s - mean_t)
    gap = capacity_per_s - rate_now  # rate still free now
    if gap > 0:
        if slope <= 0:
            return None
        cross = gap / slope  # seconds until arrivals equal capacity
    else:
        cross = 0.0
    # Backlog after the crossing at tau seconds: over * tau + slope * tau^2 / 2 (over > 0 only
    # when arrivals already exceed capacity now). Smallest tau where it reaches queue_free.
    over = max(0.0, -gap)
    if slope == 0:
        if over <= 0:
            return None
        fill = queue_free / over
    else:
        disc = over * over + 2 * slope * queue_free
        if disc < 0:
            return None  # the line turns back down before the queue fills
        fill = (-over + math.sqrt(disc)) / slope if queue_free > 0 else 0.0
    in_s = cross + fill
    if in_s > horizon_s:
        return None
    rate = rate_now + slope * in_s
    return CapacityWarning(now_s + in_s, in_s, rate, capacity_per_s, "trend")
