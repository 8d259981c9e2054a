"""The oracle search's lower bounds: what no schedule meeting the SLO target can pay less than.

Both are Lagrangian bounds over the per-interval ready counts: for every price of a missed
request, the cheapest ready path (replica time, start-ups charged, priced misses; exact by
``_schedule_search.chain_dp``) less the price times the violation budget is a lower bound,
so the best price found is kept. They differ in the misses they charge (``oracle_search``'s
module docstring): the model bound the aggregated model's own optimistic count per interval,
the fluid bound (here in full) only requests no capacity could serve in time. Pure
computation, no I/O.
"""

from __future__ import annotations

import math

import numpy as np

from aiscale.plan._schedule_search import chain_dp
from aiscale.plan._simcore import SimulationConfig
from aiscale.plan.traffic import ArrivalCounts, FloatArray

__all__ = ["dual_bound", "fluid_lower_bound_replica_hours", "fluid_terms"]


def fluid_terms(
    counts: ArrivalCounts, config: SimulationConfig, levels: np.ndarray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per interval and level: requests lost for lack of capacity (the fluid bound's
    misses); per interval: arrivals and length in seconds."""
    profile = config.profile
    best = max(b / profile.mean_latency_s(b) for b in range(1, config.max_batch_size + 1))
    server = profile.server
    if server is not None:  # the least slowdown at any rate: the line's start, or the curve's
        best /= min([float(server.slowdown(0.0)), *server.slowdown_values])
    per_s = best
    dt = counts.step_s
    steps = max(1, round(config.decision_interval_s / dt))
    num = math.ceil(counts.counts.size / steps)
    padded = np.zeros(num * steps)
    padded[: counts.counts.size] = counts.counts
    per_step = padded.reshape(num, steps)
    arrivals: FloatArray = per_step.sum(axis=1)
    # Arrivals in each interval's last ``slo`` seconds may be served just after it.
    tail = np.zeros(num)
    remaining = config.slo_p99_ms / 1000.0
    for k in range(steps - 1, -1, -1):
        if remaining <= 0:
            break
        tail += per_step[:, k] * min(dt, remaining) / dt
        remaining -= dt
    lengths: FloatArray = np.full(num, steps * dt)
    lengths[-1] = counts.counts.size * dt - (num - 1) * steps * dt
    capacity = per_s * lengths
    served = levels[None, :] * capacity[:, None] + tail[:, None]
    lost: FloatArray = np.maximum(arrivals[:, None] - served, 0.0)
    return lost, arrivals, lengths


def dual_bound(
    ready_s: FloatArray, least_misses: FloatArray, config: SimulationConfig, budget: float
) -> float:
    """max over prices of the priced path's cost less price x budget, in hours: a lower
    bound on every schedule whose misses (at least ``least_misses``) fit the budget."""
    interval_s = config.decision_interval_s
    switch = math.floor(config.replica_startup_s / interval_s + 1e-9) * interval_s
    rows = np.arange(ready_s.shape[0])

    def dual(price: float) -> tuple[float, float]:
        value, path = chain_dp(ready_s + price * least_misses, switch)
        return value - price * budget, float(least_misses[rows, path].sum())

    bound, losses = dual(0.0)
    if losses <= budget:
        return bound / 3600.0
    # Every price gives a valid bound; bisect on the subgradient's sign towards the best.
    low, high = -9.0, 6.0
    for _ in range(22):
        mid = (low + high) / 2
        value, losses = dual(10.0**mid)
        bound = max(bound, value)
        low, high = (mid, high) if losses > budget else (low, mid)
    return bound / 3600.0


def fluid_lower_bound_replica_hours(
    counts: ArrivalCounts,
    config: SimulationConfig,
    *,
    slo_target: float = 0.99,
    min_replicas: int = 1,
) -> float:
    """The fluid bound (``oracle_search``'s docstring): replica-hours below which no schedule can
    meet ``slo_target`` for lack of capacity alone, whatever its latency."""
    top = 1
    while True:
        levels = np.arange(min_replicas, min_replicas + top + 1)
        lost, _, lengths = fluid_terms(counts, config, levels)
        if lost[:, -1].max(initial=0.0) <= 0:
            break
        top *= 2
    ready_s = levels[None, :] * lengths[:, None]
    return dual_bound(ready_s, lost, config, (1.0 - slo_target) * counts.num_requests)
