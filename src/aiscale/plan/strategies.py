"""The planner's strategies: how each one runs its replicas and how it buys them.

A strategy is a scaling policy (simulated by the planner) and a way to pay for the replicas
it keeps: on demand, spot above an on-demand floor (with spares for reclaims), or a reserved
base with on-demand above it. This module prices a ``SimulationResult`` and says which of its
figures are estimates; it simulates nothing and reads no files (the catalog is passed in).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiscale.plan._simcore import SimulationResult
from aiscale.plan.catalog import HardwareSpec, SourcedFigure
from aiscale.plan.traffic import DAY_S

HOURS_PER_MONTH = 730.0
STRATEGIES: tuple[str, ...] = (
    "static at peak",
    "reactive",
    "predictive",
    "scale to zero",
    "spot mix",
    "reserved base",
)
#: How each strategy is bought, for the tables.
PRICING: Mapping[str, str] = {
    "static at peak": "on demand",
    "reactive": "on demand",
    "predictive": "on demand",
    "scale to zero": "on demand",
    "spot mix": "spot over an on-demand floor",
    "reserved base": "reserved 1 yr + on demand",
}
#: From this many users on, every strategy but scale to zero keeps at least
#: ``REDUNDANT_MIN_REPLICAS`` replicas: one replica lost (a crash, a redeploy, a node drained)
#: must not take the service down. Below it a single replica is accepted.
REDUNDANCY_FROM_USERS = 10_000
REDUNDANT_MIN_REPLICAS = 2
#: Spare spot replicas per spot replica running (at least one while any runs). A spot replica
#: can be reclaimed at two minutes' notice; the AWS Spot Instance Advisor puts most instance
#: types at 5-20% interruptions a month, and reclaims come in groups, so the spares carry the
#: load while replacements start.
SPOT_SPARE_SHARE = 0.10


@dataclass(frozen=True, slots=True)
class StrategyOutcome:
    """One strategy simulated over the phase's traffic; costs extrapolated to a month."""

    strategy: str
    hardware: str
    mode: str
    replica_hours_per_day: float
    max_replicas: int
    monthly_cost_usd: float
    p50_ms: float
    p99_ms: float
    slo_attainment: float
    meets_slo: bool
    #: ``(t_s, replicas paid for, replicas ready)`` at each decision.
    timeline: tuple[tuple[float, int, int], ...] = field(repr=False, compare=False)
    #: The fewest replicas paid for at any decision (0: it scaled to zero).
    min_replicas: int = 0
    #: How the replicas are bought (``PRICING``).
    pricing: str = "on demand"
    #: Times the fleet came back from zero replicas (requests waited for a start-up).
    num_cold_starts: int = 0
    #: The replicas kept for availability in this phase (``REDUNDANCY_FROM_USERS``).
    floor_replicas: int = 1
    #: What in this row is an estimate rather than a measurement or a firm list price
    #: (empty: nothing); the catalog marks its estimated speeds and uncertain prices.
    estimates: tuple[str, ...] = ()
    #: What the cost leaves out or adds (spares, interruptions, commitments).
    note: str = ""

    @property
    def is_estimated(self) -> bool:
        return bool(self.estimates)

    @property
    def has_floor(self) -> bool:
        """Whether the fleet kept the phase's availability floor (always, where the floor is
        one replica: scaling to zero is then a fair choice)."""
        return (
            self.floor_replicas < REDUNDANT_MIN_REPLICAS or self.min_replicas >= self.floor_replicas
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "hardware": self.hardware,
            "pricing": self.pricing,
            "mode": self.mode,
            "replica_hours_per_day": self.replica_hours_per_day,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "floor_replicas": self.floor_replicas,
            "monthly_cost_usd": self.monthly_cost_usd,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "slo_attainment": self.slo_attainment,
            "meets_slo": self.meets_slo,
            "num_cold_starts": self.num_cold_starts,
            "is_estimated": self.is_estimated,
            "estimates": list(self.estimates),
            "note": self.note,
        }


def _estimates(
    hardware: HardwareSpec, is_speed_estimated: bool, kinds: Sequence[str]
) -> tuple[str, ...]:
    """What in a row priced with ``kinds`` on ``hardware`` the catalog marks as estimated."""
    found = ["speed"] if is_speed_estimated or hardware.relative_speed.is_uncertain else []
    for kind in kinds:
        figure: SourcedFigure = getattr(hardware, kind)
        if figure.is_uncertain:
            found.append(f"{kind.replace('_', '-')} price")
    return tuple(found)


def _intervals(
    timeline: Sequence[tuple[float, int, int]], duration_s: float
) -> list[tuple[float, int]]:
    """``(seconds, replicas paid for)`` for each stretch between decisions."""
    stretches = []
    for k, (t, paid, _) in enumerate(timeline):
        until = timeline[k + 1][0] if k + 1 < len(timeline) else duration_s
        if until > t:
            stretches.append((until - t, paid))
    return stretches


def price_outcome(
    strategy: str,
    hardware: HardwareSpec,
    result: SimulationResult,
    duration_s: float,
    slo_target: float,
    *,
    floor: int,
    is_speed_estimated: bool,
) -> StrategyOutcome:
    """Price ``result`` the way ``strategy`` buys its replicas (``PRICING``).

    On demand: every replica-hour at the on-demand price. Spot mix: the availability floor
    runs on demand, every replica above it on spot, plus ``SPOT_SPARE_SHARE`` spares (at
    least one while any spot replica runs). Reserved base: the fewest replicas the day
    needed are reserved for a year (paid every hour, used or not), the rest on demand.
    """
    hours = result.replica_hours
    stretches = _intervals(result.timeline, duration_s)
    fewest = min((paid for _, paid in stretches), default=0)
    fullest = max((paid for _, paid in stretches), default=0)
    on_demand = hardware.price_per_hour("on_demand")
    kinds: list[str] = ["on_demand"]
    note = ""
    if strategy == "spot mix":
        base_h = sum(min(paid, floor) * s for s, paid in stretches) / 3600.0
        spares = [math.ceil(SPOT_SPARE_SHARE * (paid - floor)) * s for s, paid in stretches]
        spares_h = sum(spares) / 3600.0
        spot_h = max(hours - base_h, 0.0) + spares_h
        day_cost = base_h * on_demand + spot_h * hardware.price_per_hour("spot")
        kinds.append("spot")
        note = (
            f"{floor} on demand, the rest spot (+{spares_h * 3600 / duration_s:.1f} spare "
            "replicas on average); a reclaim gives 2 min notice and the spares carry its load"
            if fullest > floor
            else "the fleet never rose above its on-demand floor: nothing ran on spot"
        )
    elif strategy == "reserved base":
        reserved_h = fewest * duration_s / 3600.0
        day_cost = (
            reserved_h * hardware.price_per_hour("reserved")
            + max(hours - reserved_h, 0.0) * on_demand
        )
        kinds.append("reserved")
        note = f"{fewest} reserved for 1 year (paid whether used or not), the rest on demand"
    else:
        day_cost = hours * on_demand
    cold_starts = sum(
        1
        for (_, before, _), (_, after, _) in zip(result.timeline, result.timeline[1:], strict=False)
        if before == 0 and after > 0
    )
    if strategy == "scale to zero":
        note = (
            f"{cold_starts} cold starts a day, their waits counted in the SLO attainment"
            if cold_starts
            else "traffic never paused long enough to reach zero"
        )
    if fewest < floor and floor >= REDUNDANT_MIN_REPLICAS:
        note = (note + "; " if note else "") + (
            f"fell to {fewest} replica(s), below the {floor} kept for availability"
        )
    monthly = day_cost * HOURS_PER_MONTH * 3600.0 / duration_s
    return StrategyOutcome(
        strategy=strategy,
        hardware=hardware.name,
        mode=result.mode,
        replica_hours_per_day=hours * DAY_S / duration_s,
        max_replicas=max((paid for _, paid, _ in result.timeline), default=0),
        monthly_cost_usd=monthly,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        slo_attainment=result.slo_attainment,
        meets_slo=result.slo_attainment >= slo_target,
        timeline=result.timeline,
        min_replicas=fewest,
        pricing=PRICING[strategy],
        num_cold_starts=cold_starts,
        floor_replicas=floor,
        estimates=_estimates(hardware, is_speed_estimated, kinds),
        note=note,
    )


#: The policy each strategy simulates; priced strategies reuse the simulation of their policy.
POLICY_OF = {
    "static at peak": "static",
    "reactive": "reactive",
    "predictive": "predictive",
    "scale to zero": "kpa",
    "spot mix": "predictive",
    "reserved base": "predictive",
}
