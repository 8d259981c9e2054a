"""The demand ceiling: the most replicas an arrival rate can use.

A replica that the arrival rate cannot keep busy lowers no latency and is paid for nothing;
a policy that asks for more than ``demand_ceiling`` (a queue-driven rule such as Ray's or
Knative's does, once a queue builds faster than replicas start) is running away. The
platform's guard (``guard.py``) holds every policy it runs below this number, and the
autoscaling benchmark reports each policy's peak against it.

``capacity_per_replica_per_s`` is the *planned* capacity of one replica: requests/s at the
target utilisation (what ``ReplicaSizing.capacity_per_s`` and the predictive policy's knob of
the same name hold), not its full-batch maximum. The ceiling is therefore the fleet the
policies aim at for this rate, plus ``headroom``.

Pure: no clock, no I/O, no randomness; the standard library only.
"""

from __future__ import annotations

import math

from aiscale.errors import ConfigError

__all__ = ["DEFAULT_HEADROOM", "demand_ceiling"]

#: Replicas allowed above the planned fleet for a rate, as a fraction of it (0.25: 25% more).
#:
#: Why 0.25: at the planner's default target utilisation of 0.7 the ceiling leaves each
#: replica at least 0.7 / 1.25 = 0.56 busy. Below that a batching replica's queueing wait is
#: already close to nothing (one partial batch), so a further replica buys no latency, only
#: cost. The margin above the planned fleet covers what a rate measured over a short window
#: gets wrong: a 10 s window at 100 requests/s holds 1,000 arrivals whose Poisson spread is
#: 3% (2.5 sigma: 8%), and the rounding of a small fleet (``ceil``) adds up to one replica.
#: A larger headroom lets a queue-driven rule overshoot further on every burst; a smaller one
#: starts clipping a policy that is on target whenever the measured rate dips.
DEFAULT_HEADROOM = 0.25


def demand_ceiling(
    arrival_rate_per_s: float,
    capacity_per_replica_per_s: float,
    *,
    headroom: float = DEFAULT_HEADROOM,
    backlog_items: float = 0.0,
    drain_within_s: float | None = None,
) -> int:
    """The most replicas ``arrival_rate_per_s`` can use (plus draining ``backlog_items``
    within ``drain_within_s`` when that is given):
    ``ceil((rate + backlog / drain_within_s) * (1 + headroom) / capacity)``, at least 1 when
    there is any demand, 0 when there is none.

    ``capacity_per_replica_per_s`` is the planned (target-utilisation) capacity of one
    replica (module docstring). Raises ``ConfigError`` for a capacity <= 0, a negative rate,
    headroom or backlog, or a ``drain_within_s`` <= 0.
    """
    if capacity_per_replica_per_s <= 0 or math.isnan(capacity_per_replica_per_s):
        raise ConfigError("must be > 0", field="capacity_per_replica_per_s")
    if arrival_rate_per_s < 0 or math.isnan(arrival_rate_per_s):
        raise ConfigError("must be >= 0", field="arrival_rate_per_s")
    if headroom < 0 or math.isnan(headroom):
        raise ConfigError("must be >= 0", field="headroom")
    if backlog_items < 0 or math.isnan(backlog_items):
        raise ConfigError("must be >= 0", field="backlog_items")
    demand_per_s = arrival_rate_per_s
    if drain_within_s is not None:
        if drain_within_s <= 0:
            raise ConfigError("must be > 0 or None", field="drain_within_s")
        demand_per_s += backlog_items / drain_within_s
    if demand_per_s <= 0:
        return 0
    # The small epsilon keeps float noise (2.0000000001) from adding a replica.
    return max(1, math.ceil(demand_per_s * (1.0 + headroom) / capacity_per_replica_per_s - 1e-9))
