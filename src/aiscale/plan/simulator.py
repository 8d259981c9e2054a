"""Replay arrivals through one deployment under a scaling policy, on simulated time.

``simulate`` runs the same policy objects the live controller runs, called every
``decision_interval_s`` of simulated time, against a model of the deployment: one bounded
queue, dynamic batching by the live batcher's rule, replicas that start ``startup_s`` after
being asked for and are paid for from then on. Two modes:

- ``exact``: per request on an event heap (``_exact.py``); deterministic event count.
- ``aggregated``: per time step and batch size with a queueing approximation
  (``_aggregated.py``); fast enough for a day of tens of millions of requests.

``compare_modes`` runs both on the same (smaller) input and reports the aggregated mode's
relative error. Nothing here reads a clock, does I/O or uses global randomness.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from aiscale.errors import ConfigError
from aiscale.plan._aggregated import run_aggregated
from aiscale.plan._exact import run_exact
from aiscale.plan._simcore import (
    CountsHistory,
    SimulationConfig,
    SimulationResult,
)
from aiscale.plan.traffic import ArrivalCounts, Arrivals
from aiscale.policies.batching import batch_size_to_take
from aiscale.scaling.policies.base import ScalingPolicy

__all__ = [
    "CountsHistory",
    "ModeComparison",
    "SimulationConfig",
    "SimulationResult",
    "batch_size_to_take",
    "compare_modes",
    "simulate",
]


def simulate(
    arrivals: Arrivals | ArrivalCounts, policy: ScalingPolicy[Any], config: SimulationConfig
) -> SimulationResult:
    """Run ``config.mode`` over ``arrivals`` with ``policy``. Exact mode needs arrival times
    (``Arrivals``); counts are spread uniformly in their steps with seed 0 if given."""
    if config.mode == "exact":
        if isinstance(arrivals, ArrivalCounts):
            arrivals = arrivals.to_arrivals(seed=0)
        return run_exact(arrivals, policy, config)
    return run_aggregated(arrivals, policy, config)


@dataclass(frozen=True, slots=True)
class ModeComparison:
    """The aggregated mode's relative error against the exact mode on one input."""

    exact: SimulationResult
    aggregated: SimulationResult
    p50_error: float
    p99_error: float
    slo_attainment_error: float
    replica_hours_error: float


def _relative(approx: float, exact: float) -> float:
    if math.isnan(approx) or math.isnan(exact):
        return math.nan
    return abs(approx - exact) / max(abs(exact), 1e-12)


def compare_modes(
    arrivals: Arrivals,
    make_policy: Callable[[], ScalingPolicy[Any]],
    config: SimulationConfig,
) -> ModeComparison:
    """Run both modes (a fresh policy each) and report relative errors; the SLO error is
    absolute (a difference of shares)."""
    if arrivals.num_requests == 0:
        raise ConfigError("nothing to compare: no arrivals", field="arrivals")
    exact = run_exact(arrivals, make_policy(), replace(config, mode="exact"))
    aggregated = run_aggregated(arrivals, make_policy(), replace(config, mode="aggregated"))
    return ModeComparison(
        exact=exact,
        aggregated=aggregated,
        p50_error=_relative(aggregated.p50_ms, exact.p50_ms),
        p99_error=_relative(aggregated.p99_ms, exact.p99_ms),
        slo_attainment_error=abs(aggregated.slo_attainment - exact.slo_attainment),
        replica_hours_error=_relative(aggregated.replica_hours, exact.replica_hours),
    )
