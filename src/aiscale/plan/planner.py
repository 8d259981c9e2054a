"""The capacity planner: right-size replicas and compare scaling strategies per growth phase.

Sizing (``plan/sizing.py``, re-exported here): one replica's batch limit, full capacity and
planned capacity follow from its profile as the replica really runs (the batch the live
batcher reaches at a load, the measured in-server slowdown and per-request overhead) and
from the latency objective. Every policy is then configured from the same numbers, never
from the traffic it will meet:

- capacity per replica: the planned capacity (``ReplicaSizing.capacity_per_s``);
- the ongoing requests one replica holds at that capacity (one replica simulated at that
  rate, then Little's law): the target of the reactive (Ray) and KPA (Knative) rules, so
  that all of them aim at the same utilisation;
- the start-up time, so the predictive policy and the oracles look far enough ahead;
- ``oracle``: the true minimum, searched in the simulator (``oracle_search.search_oracle``:
  the fewest replica-hours meeting the SLO target, knowing every arrival); ``oracle-70``: the
  old bound, the fewest replicas at the planned 70% capacity (``needed_replicas``), kept by
  that name for comparison. The per-phase plan below does not run either: its strategies are
  the policies a user would deploy. It uses the ``oracle-70`` schedule only to size
  static-at-peak and the starting fleet, where one pass over the day's rates is enough; a
  search costs about twenty simulations of the day per phase and hardware;
- the platform's guard (``guard_config``) on ``reactive``, ``kpa`` and ``predictive``, from
  the same capacity, utilisation and start-up time; ``ray-serve-rule`` and ``knative-rule``
  are the two rules unguarded (baselines).

The delays and windows stay the products' own defaults (Ray Serve: 30 s up, 600 s down;
Knative: 60 s stable, 6 s panic). Used by the planner, ``aiscale simulate`` and the
autoscaling benchmark alike.

Planning (``plan``): for each phase (a number of users) one day of synthetic traffic is
simulated under each strategy on the hardware that is cheapest at peak, and costs are
extrapolated to a month (730 h). This module computes; it writes no files (``report.py``
does) and prints nothing (progress goes to an injected callback).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from aiscale.errors import InvalidInput
from aiscale.plan._simcore import SimulationConfig, SimulationResult
from aiscale.plan.catalog import HardwareSpec, derive_profile, load_catalog
from aiscale.plan.oracle_search import search_oracle
from aiscale.plan.profile import ModelProfile
from aiscale.plan.simulator import simulate
from aiscale.plan.sizing import MAX_BATCH_LIMIT as MAX_BATCH_LIMIT  # re-exported
from aiscale.plan.sizing import ReplicaSizing as ReplicaSizing
from aiscale.plan.sizing import served_capacity_per_s as served_capacity_per_s
from aiscale.plan.sizing import size_replica as size_replica
from aiscale.plan.strategies import (
    HOURS_PER_MONTH,
    POLICY_OF,
    REDUNDANCY_FROM_USERS,
    REDUNDANT_MIN_REPLICAS,
    STRATEGIES,
    StrategyOutcome,
    price_outcome,
)
from aiscale.plan.traffic import DAY_S, ArrivalCounts, Arrivals, SyntheticTraffic
from aiscale.scaling.policies import (
    GuardConfig,
    GuardedPolicy,
    KpaConfig,
    KpaPolicy,
    OracleConfig,
    OraclePolicy,
    PredictiveConfig,
    PredictivePolicy,
    ReactiveConfig,
    ReactivePolicy,
    ScalingPolicy,
    StaticConfig,
    StaticPolicy,
    oracle_schedule,
)

#: ``reactive``, ``kpa`` and ``predictive`` run under the platform's guard (demand ceiling,
#: backlog-aware scale-up, rate-limited steps); ``ray-serve-rule`` and ``knative-rule`` are
#: the same two rules unguarded, as the products run them (baselines).
POLICY_NAMES: tuple[str, ...] = (
    "static",
    "reactive",
    "kpa",
    "predictive",
    "oracle",
    "oracle-70",
    "ray-serve-rule",
    "knative-rule",
)


def interval_rates(counts: ArrivalCounts, interval_s: float) -> tuple[float, ...]:
    """Mean arrival rate in each ``interval_s`` window (the last one may be partial)."""
    group = max(1, round(interval_s / counts.step_s))
    num = math.ceil(counts.counts.size / group)
    padded = np.zeros(num * group, dtype=np.float64)
    padded[: counts.counts.size] = counts.counts
    rates = padded.reshape(num, group).sum(axis=1) / (group * counts.step_s)
    return tuple(float(r) for r in rates)


def needed_replicas(
    sizing: ReplicaSizing, counts: ArrivalCounts, decision_interval_s: float
) -> tuple[int, ...]:
    """The oracle's fleet per decision interval (replicas paid for, start-up included)."""
    return oracle_schedule(
        interval_rates(counts, decision_interval_s),
        sizing.capacity_per_s,
        math.ceil(sizing.startup_s / decision_interval_s - 1e-9),
        min_replicas=1,
    )


def peak_replicas(sizing: ReplicaSizing, counts: ArrivalCounts, decision_interval_s: float) -> int:
    """Static-at-peak: enough replicas for the busiest decision interval of the day."""
    return max(needed_replicas(sizing, counts, decision_interval_s), default=1)


def reactive_config(sizing: ReplicaSizing, *, min_replicas: int = 1) -> ReactiveConfig:
    return ReactiveConfig(
        target_ongoing_requests=sizing.ongoing_at_target(),
        min_replicas=min_replicas,
        max_replicas=100_000,
    )


def kpa_config(sizing: ReplicaSizing, *, min_replicas: int = 1) -> KpaConfig:
    return KpaConfig(
        # The target already holds the utilisation; Knative's 0.7 is not applied twice.
        target_concurrency=sizing.ongoing_at_target(),
        target_utilization=1.0,
        min_replicas=min_replicas,
        max_replicas=100_000,
    )


def guard_config(sizing: ReplicaSizing, *, min_replicas: int = 1) -> GuardConfig:
    """The platform's guard for a replica sized by ``sizing``: its planned capacity, target
    utilisation and start-up time; the guard's own defaults for the rest."""
    return GuardConfig(
        capacity_per_replica_per_s=sizing.capacity_per_s,
        target_utilization=sizing.target_utilization,
        startup_s=sizing.startup_s,
        min_replicas=min_replicas,
        max_replicas=100_000,
    )


def build_policy(
    name: str,
    sizing: ReplicaSizing,
    counts: ArrivalCounts,
    *,
    decision_interval_s: float = 10.0,
    min_replicas: int = 1,
    num_replicas: int | None = None,
    config: SimulationConfig | None = None,
    arrivals: Arrivals | None = None,
    slo_target: float = 0.99,
) -> ScalingPolicy[Any]:
    """The policy ``name`` with the defaults of the module docstring.

    ``counts`` is what the oracles know (all arrivals) and what ``static`` is sized for when
    ``num_replicas`` is not given (its peak). ``oracle`` is searched in the simulation it
    will be judged by: ``config`` (default: ``simulation_config`` in the aggregated mode)
    on ``arrivals`` in the exact mode, else on ``counts``, for ``slo_target``; its schedule
    starts from its own fleet, so run it with ``initial_replicas`` set to
    ``policy.config.replicas[0]`` (or take ``search_oracle``'s replay directly, as ``aiscale
    simulate`` does). Raises ``InvalidInput`` (field ``policy``) for an unknown name.
    """
    if name == "static":
        count = peak_replicas(sizing, counts, decision_interval_s)
        return StaticPolicy(StaticConfig(count if num_replicas is None else num_replicas))
    guard = guard_config(sizing, min_replicas=min_replicas)
    if name in ("reactive", "ray-serve-rule"):
        ray_rule = ReactivePolicy(reactive_config(sizing, min_replicas=min_replicas))
        return ray_rule if name == "ray-serve-rule" else GuardedPolicy(ray_rule, guard)
    if name in ("kpa", "knative-rule"):
        knative_rule = KpaPolicy(kpa_config(sizing, min_replicas=min_replicas))
        return knative_rule if name == "knative-rule" else GuardedPolicy(knative_rule, guard)
    if name == "predictive":
        return PredictivePolicy(
            PredictiveConfig(
                reactive=reactive_config(sizing, min_replicas=min_replicas),
                capacity_per_replica_per_s=sizing.capacity_per_s,
                target_utilization=sizing.target_utilization,
                startup_s=sizing.startup_s,
                guard=guard,
            )
        )
    if name == "oracle":
        if config is None:
            config = simulation_config(sizing, counts, decision_interval_s=decision_interval_s)
        source: Arrivals | ArrivalCounts = counts
        if config.mode == "exact":
            source = arrivals if arrivals is not None else counts.to_arrivals(config.seed)
        found = search_oracle(source, config, slo_target=slo_target, min_replicas=min_replicas)
        return found.policy()
    if name == "oracle-70":
        return OraclePolicy(
            OracleConfig(
                rates_per_s=interval_rates(counts, decision_interval_s),
                step_s=decision_interval_s,
                capacity_per_replica_per_s=sizing.capacity_per_s,
                startup_s=sizing.startup_s,
                min_replicas=min_replicas,
                decision_interval_s=decision_interval_s,
            )
        )
    raise InvalidInput(
        f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}", field="policy"
    )


def simulation_config(
    sizing: ReplicaSizing,
    counts: ArrivalCounts,
    *,
    mode: str = "aggregated",
    decision_interval_s: float = 10.0,
    price_per_replica_hour: float = 0.0,
    initial_replicas: int | None = None,
    history_bin_s: float = 60.0,
) -> SimulationConfig:
    """The simulation of one deployment sized by ``sizing``; by default it starts with the
    replicas the first interval needs (every policy starts from the same fleet)."""
    if initial_replicas is None:
        initial_replicas = needed_replicas(sizing, counts, decision_interval_s)[0]
    if mode not in ("exact", "aggregated"):
        raise InvalidInput(f"unknown mode {mode!r}", field="mode")
    return SimulationConfig(
        profile=sizing.profile,
        max_batch_size=sizing.max_batch_size,
        max_batch_delay_s=sizing.max_batch_delay_s,
        initial_replicas=initial_replicas,
        startup_s=sizing.startup_s,
        decision_interval_s=decision_interval_s,
        slo_p99_ms=sizing.slo_p99_ms,
        price_per_replica_hour=price_per_replica_hour,
        mode=mode,  # type: ignore[arg-type]
        step_s=counts.step_s,
        history_bin_s=history_bin_s,
    )


# ------------------------------------------------------------------------------ planning

SHAPES: tuple[str, ...] = ("flat", "daily", "weekly", "bursty")
#: Exact simulation up to this many requests in ``auto`` mode; aggregated beyond.
EXACT_AUTO_LIMIT = 500_000
ProgressCallback = Callable[[int, int, str], None]


def traffic_for(
    shape: str, num_users: int, requests_per_user: float, seed: int = 0
) -> tuple[SyntheticTraffic, float]:
    """The synthetic traffic of ``shape`` and its natural duration (a week for ``weekly``,
    else a day). ``flat``: constant mean rate; ``daily``: 4:1 day/night cycle with two bursts
    a day; ``weekly``: the same over a week with quieter weekends; ``bursty``: the daily
    cycle with twelve 3x bursts a day."""
    if shape not in SHAPES:
        raise InvalidInput(
            f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}", field="shape"
        )
    if num_users < 0:
        raise InvalidInput("must be >= 0", field="users")
    if requests_per_user < 0:
        raise InvalidInput("must be >= 0", field="requests_per_user")
    common: dict[str, Any] = {
        "num_users": num_users,
        "requests_per_user_per_day": requests_per_user,
        "seed": seed,
    }
    if shape == "flat":
        return SyntheticTraffic(
            **common, peak_to_trough=1.0, weekend_factor=1.0, bursts_per_day=0.0
        ), DAY_S
    if shape == "bursty":
        return SyntheticTraffic(**common, bursts_per_day=12.0), DAY_S
    if shape == "weekly":
        return SyntheticTraffic(**common), 7 * DAY_S
    return SyntheticTraffic(**common), DAY_S


def choose_mode(mode: str, num_requests: int) -> str:
    """``exact``/``aggregated`` as given; ``auto``: exact up to ``EXACT_AUTO_LIMIT`` requests."""
    if mode == "auto":
        return "exact" if num_requests <= EXACT_AUTO_LIMIT else "aggregated"
    if mode not in ("exact", "aggregated"):
        raise InvalidInput(
            f"unknown mode {mode!r}; expected exact, aggregated or auto", field="mode"
        )
    return mode


@dataclass(frozen=True, slots=True)
class HardwareOption:
    """One catalog entry sized for a phase: replicas for the peak and their monthly price."""

    hardware: str
    max_batch_size: int
    capacity_per_replica_per_s: float
    replicas_at_peak: int
    price_per_hour: float
    monthly_cost_at_peak_usd: float
    is_estimated: bool
    #: The catalog's instance name (what to buy).
    instance: str = ""


@dataclass(frozen=True, slots=True)
class PhasePlan:
    """The plan for one number of users."""

    num_users: int
    requests_per_day: float
    mean_rate_per_s: float
    peak_rate_per_s: float
    hardware: str
    replicas_at_peak: int
    capacity_per_replica_per_s: float
    options: tuple[HardwareOption, ...]
    outcomes: tuple[StrategyOutcome, ...]
    #: Architectures (strategy on hardware) meeting the SLO: the cheapest and the costliest.
    cheapest: str | None
    costliest: str | None
    cost_ratio: float | None
    #: Arrivals per second averaged over each minute, for the report's traffic plot.
    rate_per_minute: tuple[float, ...] = field(repr=False, compare=False)
    #: The replicas every strategy but scale to zero keeps, for availability.
    floor_replicas: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": self.num_users,
            "requests_per_day": self.requests_per_day,
            "mean_rate_per_s": self.mean_rate_per_s,
            "peak_rate_per_s": self.peak_rate_per_s,
            "hardware": self.hardware,
            "replicas_at_peak": self.replicas_at_peak,
            "capacity_per_replica_per_s": self.capacity_per_replica_per_s,
            "hardware_options": [asdict(option) for option in self.options],
            "strategies": [outcome.to_dict() for outcome in self.outcomes],
            "cheapest": self.cheapest,
            "costliest": self.costliest,
            "cost_ratio": self.cost_ratio,
            "floor_replicas": self.floor_replicas,
        }


@dataclass(frozen=True, slots=True)
class PlanResult:
    model: str
    measured_hardware: str
    slo_p99_ms: float
    slo_target: float
    requests_per_user: float
    shape: str
    duration_s: float
    phases: tuple[PhasePlan, ...]
    #: Files written by ``report.write_report`` (empty until a report is written).
    files: tuple[str, ...] = ()
    #: From this many users on, strategies keep ``REDUNDANT_MIN_REPLICAS`` replicas.
    redundancy_from_users: int = REDUNDANCY_FROM_USERS
    #: Why the plan may be off (an unsteady profile planned from anyway), for the reader.
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "measured_hardware": self.measured_hardware,
            "slo_p99_ms": self.slo_p99_ms,
            "slo_target": self.slo_target,
            "requests_per_user": self.requests_per_user,
            "shape": self.shape,
            "duration_s": self.duration_s,
            "phases": [phase.to_dict() for phase in self.phases],
            "files": list(self.files),
            "redundancy_from_users": self.redundancy_from_users,
            "warnings": list(self.warnings),
        }


def _size_options(
    profile: ModelProfile,
    counts: ArrivalCounts,
    slo_p99_ms: float,
    catalog: Mapping[str, HardwareSpec],
    names: Sequence[str],
    startup_s: float | None,
    interval_s: float,
    floor: int = 1,
) -> list[tuple[HardwareOption, ReplicaSizing]]:
    options = []
    for name in names:
        try:
            derived = derive_profile(profile, name, catalog)
            sizing = size_replica(derived, slo_p99_ms, startup_s=startup_s)
        except InvalidInput:
            continue  # does not fit in memory, or too slow for the SLO
        replicas = peak_replicas(sizing, counts, interval_s)
        price = catalog[name].price_per_hour("on_demand")
        options.append(
            (
                HardwareOption(
                    hardware=name,
                    max_batch_size=sizing.max_batch_size,
                    capacity_per_replica_per_s=sizing.capacity_per_s,
                    replicas_at_peak=replicas,
                    price_per_hour=price,
                    # What the peak costs with the availability floor kept.
                    monthly_cost_at_peak_usd=max(replicas, floor) * price * HOURS_PER_MONTH,
                    is_estimated=derived.estimated,
                    instance=catalog[name].instance,
                ),
                sizing,
            )
        )
    if not options:
        raise InvalidInput(
            f"no hardware in the catalog can serve {profile.model} within {slo_p99_ms:g} ms",
            field="slo_p99_ms",
        )
    return options


def plan(
    profile: ModelProfile,
    users: Sequence[int],
    requests_per_user: float,
    slo_p99_ms: float,
    *,
    shape: str = "daily",
    hardware: Sequence[str] | None = None,
    catalog: Mapping[str, HardwareSpec] | None = None,
    slo_target: float = 0.99,
    startup_s: float | None = None,
    decision_interval_s: float = 10.0,
    duration_s: float | None = None,
    mode: str = "auto",
    seed: int = 0,
    on_progress: ProgressCallback | None = None,
    redundancy_from_users: int = REDUNDANCY_FROM_USERS,
    warnings: Sequence[str] = (),
) -> PlanResult:
    """Plan each phase of ``users``; see the module docstring.

    The chosen hardware (cheapest at peak, on demand) runs every strategy; every other
    fitting catalog entry runs static-at-peak, so the cost ratio spans architectures.
    From ``redundancy_from_users`` users on, every strategy but scale to zero keeps at least
    ``REDUNDANT_MIN_REPLICAS`` replicas (the replica count the sizing gives is otherwise
    kept). ``on_progress(done, total, label)`` is called after each simulation. Raises
    ``InvalidInput`` naming the field for bad arguments.
    """
    if redundancy_from_users < 0:
        raise InvalidInput("must be >= 0", field="redundancy_from_users")
    if not users or any(u <= 0 for u in users):
        raise InvalidInput("give one or more user counts, each > 0", field="users")
    if not 0 < slo_target <= 1:
        raise InvalidInput("must be in (0, 1]", field="slo_target")
    catalog = catalog if catalog is not None else load_catalog()
    names = list(hardware) if hardware else list(catalog)
    for name in names:
        if name not in catalog:
            raise InvalidInput(f"hardware {name!r} is not in the catalog", field="hardware")
    _, natural_s = traffic_for(shape, 1, requests_per_user, seed)
    duration = natural_s if duration_s is None else duration_s
    if duration <= 0:
        raise InvalidInput("must be > 0", field="duration_s")
    phases: list[PhasePlan] = []
    policies = sorted(set(POLICY_OF.values()), key=list(POLICY_OF.values()).index)
    total = len(users) * (len(policies) + len(names) - 1)
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total, label)

    for num_users in users:
        traffic, _ = traffic_for(shape, num_users, requests_per_user, seed)
        counts = traffic.counts(duration, step_s=1.0)
        floor = REDUNDANT_MIN_REPLICAS if num_users >= redundancy_from_users else 1
        # The cheapest at peak once the availability floor is kept: two small replicas can
        # cost less than two large ones that one of them would have been enough for.
        sized = _size_options(
            profile, counts, slo_p99_ms, catalog, names, startup_s, decision_interval_s, floor
        )
        sized.sort(key=lambda pair: (pair[0].monthly_cost_at_peak_usd, pair[0].price_per_hour))
        best_option, best_sizing = sized[0]
        run_mode = choose_mode(mode, counts.num_requests)
        results: dict[str, SimulationResult] = {}
        for policy_name in policies:
            # Scale to zero is the one strategy allowed below the floor: that is its point.
            least = 0 if policy_name == "kpa" else floor
            policy = build_policy(
                policy_name,
                best_sizing,
                counts,
                decision_interval_s=decision_interval_s,
                min_replicas=least,
                num_replicas=(
                    max(best_option.replicas_at_peak, floor) if policy_name == "static" else None
                ),
            )
            config = simulation_config(
                best_sizing,
                counts,
                mode=run_mode,
                decision_interval_s=decision_interval_s,
                initial_replicas=max(
                    needed_replicas(best_sizing, counts, decision_interval_s)[0], least
                ),
            )
            results[policy_name] = simulate(counts, policy, config)
            tick(f"{num_users:,} users: {policy_name} on {best_option.hardware}")
        outcomes = [
            price_outcome(
                strategy,
                catalog[best_option.hardware],
                results[POLICY_OF[strategy]],
                duration,
                slo_target,
                floor=floor,
                is_speed_estimated=best_option.is_estimated,
            )
            for strategy in STRATEGIES
        ]
        for option, sizing in sized[1:]:
            count = max(option.replicas_at_peak, floor)
            policy = build_policy(
                "static",
                sizing,
                counts,
                decision_interval_s=decision_interval_s,
                num_replicas=count,
            )
            config = simulation_config(
                sizing,
                counts,
                mode=run_mode,
                decision_interval_s=decision_interval_s,
                initial_replicas=count,
            )
            result = simulate(counts, policy, config)
            outcomes.append(
                price_outcome(
                    "static at peak",
                    catalog[option.hardware],
                    result,
                    duration,
                    slo_target,
                    floor=floor,
                    is_speed_estimated=option.is_estimated,
                )
            )
            tick(f"{num_users:,} users: static at peak on {option.hardware}")
        while done < total * (len(phases) + 1) // len(users):  # hardware skipped above
            tick(f"{num_users:,} users")
        meeting = sorted(
            (o for o in outcomes if o.meets_slo and o.has_floor),
            key=lambda o: o.monthly_cost_usd,
        )
        minute = max(1, round(60.0 / counts.step_s))
        usable = counts.counts.size - counts.counts.size % minute
        per_minute = counts.counts[:usable].reshape(-1, minute).sum(axis=1) / 60.0
        phases.append(
            PhasePlan(
                num_users=num_users,
                requests_per_day=traffic.mean_rate_per_s * DAY_S,
                mean_rate_per_s=counts.num_requests / counts.duration_s,
                peak_rate_per_s=float(per_minute.max(initial=0.0)),
                hardware=best_option.hardware,
                replicas_at_peak=best_option.replicas_at_peak,
                capacity_per_replica_per_s=best_option.capacity_per_replica_per_s,
                options=tuple(option for option, _ in sized),
                outcomes=tuple(outcomes),
                cheapest=f"{meeting[0].strategy} on {meeting[0].hardware}" if meeting else None,
                costliest=f"{meeting[-1].strategy} on {meeting[-1].hardware}" if meeting else None,
                cost_ratio=(
                    meeting[-1].monthly_cost_usd / meeting[0].monthly_cost_usd
                    if meeting and meeting[0].monthly_cost_usd > 0
                    else None
                ),
                rate_per_minute=tuple(float(r) for r in per_minute),
                floor_replicas=floor,
            )
        )
    return PlanResult(
        model=profile.model,
        measured_hardware=profile.hardware
        + ("" if profile.measured_on is None else f" ({profile.measured_on})"),
        slo_p99_ms=slo_p99_ms,
        slo_target=slo_target,
        requests_per_user=requests_per_user,
        shape=shape,
        duration_s=duration,
        phases=tuple(phases),
        redundancy_from_users=redundancy_from_users,
        warnings=tuple(warnings),
    )
