"""Synthetic bursty days: a daily cycle plus stated bursts, for the autoscaling benchmark.

A ``BurstyDay`` is one day of traffic: the planner's daily cycle (``SyntheticTraffic``'s
cosine, ``peak_to_trough`` between its busiest and quietest hour, peaking at ``peak_hour``)
times bursts that multiply the rate by a stated factor (5x and 10x by default) for 1 to 5
minutes, at start times and lengths drawn from ``seed``. The day holds
``requests_per_day`` in expectation: the cycle is scaled down by the bursts' share, so a day
of bursts and a trace day of the same users carry the same traffic.

Arrivals are drawn as the benchmark draws a trace's day (``benchmarks/autoscaling/run.py``
``day_counts``): each step's count is a Poisson draw of its mean rate times the step,
a non-homogeneous Poisson process over the binned rate. Bursts never overlap, so each burst's
factor is exactly as stated. Seeded, no global randomness, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aiscale.errors import ConfigError
from aiscale.plan.traffic import DAY_S, ArrivalCounts, FloatArray, SyntheticTraffic

__all__ = ["Burst", "BurstyDay"]

#: Draws of a burst's start before giving up on finding room for it among the others.
_PLACEMENT_TRIES = 1000


@dataclass(frozen=True, slots=True)
class Burst:
    """The rate times ``multiplier`` over ``[start_s, start_s + duration_s)``."""

    start_s: float
    duration_s: float
    multiplier: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class BurstyDay:
    """One day (``day_s``) of the daily cycle with one burst per entry of ``multipliers``.

    Each burst lasts a whole number of seconds drawn uniformly from ``[min_burst_s,
    max_burst_s]`` and starts at a whole second drawn uniformly from where it fits; bursts
    are drawn in order and redrawn when they would overlap an earlier one.
    """

    requests_per_day: float
    multipliers: tuple[float, ...] = (5.0, 10.0, 5.0, 10.0, 5.0, 10.0)
    min_burst_s: float = 60.0
    max_burst_s: float = 300.0
    peak_to_trough: float = 4.0
    peak_hour: float = 14.0
    seed: int = 0
    day_s: float = DAY_S

    def __post_init__(self) -> None:
        if not (math.isfinite(self.requests_per_day) and self.requests_per_day >= 0):
            raise ConfigError("must be finite and >= 0", field="requests_per_day")
        if any(not (math.isfinite(m) and m >= 1) for m in self.multipliers):
            raise ConfigError("burst multipliers must be >= 1", field="multipliers")
        if not 0 < self.min_burst_s <= self.max_burst_s:
            raise ConfigError("need 0 < min_burst_s <= max_burst_s", field="min_burst_s")
        if self.day_s < self.max_burst_s or self.max_burst_s * len(self.multipliers) > (
            self.day_s / 2
        ):
            raise ConfigError("the bursts must fit in half the day at their longest", field="day_s")
        if self.peak_to_trough < 1:
            raise ConfigError("must be >= 1", field="peak_to_trough")

    def bursts(self) -> tuple[Burst, ...]:
        """The bursts, in time order (the same for every call with the same seed)."""
        rng = np.random.default_rng([self.seed, 3])
        placed: list[Burst] = []
        for multiplier in self.multipliers:
            low, high = math.ceil(self.min_burst_s), math.floor(self.max_burst_s)
            duration = float(rng.integers(low, high + 1))
            for _ in range(_PLACEMENT_TRIES):
                start = float(rng.integers(0, int(self.day_s - duration) + 1))
                if all(start >= b.end_s or start + duration <= b.start_s for b in placed):
                    placed.append(Burst(start, duration, multiplier))
                    break
            else:  # pragma: no cover - the size check above leaves ample room
                raise ConfigError("no room for another burst", field="multipliers")
        return tuple(sorted(placed, key=lambda b: b.start_s))

    def rate_per_s(self, step_s: float = 1.0) -> FloatArray:
        """The mean arrival rate in each step of ``step_s`` (a burst covering part of a step
        raises it by that share)."""
        if step_s <= 0:
            raise ConfigError("must be > 0", field="step_s")
        num_steps = max(1, math.ceil(self.day_s / step_s - 1e-9))
        starts = np.arange(num_steps, dtype=np.float64) * step_s
        cycle = SyntheticTraffic(
            num_users=1,
            requests_per_user_per_day=1.0,
            peak_to_trough=self.peak_to_trough,
            peak_hour=self.peak_hour,
            weekend_factor=1.0,
            bursts_per_day=0.0,
        ).rate_per_s(starts + step_s / 2)
        factor = np.ones(num_steps)
        for burst in self.bursts():
            covered = np.clip(
                np.minimum(starts + step_s, burst.end_s) - np.maximum(starts, burst.start_s),
                0.0,
                step_s,
            )
            factor += (burst.multiplier - 1.0) * covered / step_s
        rate = cycle * factor
        total = float(rate.sum()) * step_s
        scaled: FloatArray = rate * (self.requests_per_day / total if total > 0 else 0.0)
        return scaled

    def counts(self, step_s: float = 1.0) -> ArrivalCounts:
        """Poisson counts per step of the rate (``seed``'s own stream)."""
        expected = self.rate_per_s(step_s) * step_s
        rng = np.random.default_rng(self.seed)
        return ArrivalCounts(rng.poisson(expected).astype(np.int64), step_s)
