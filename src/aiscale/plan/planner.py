"""The capacity planner: right-size replicas and compare scaling strategies per growth phase.

Sizing (below): one replica's settings follow from its profile and the latency objective:
the largest batch whose worst ordinary wait (one batch in progress, then its own batch, plus
the batch delay) fits the SLO, and the throughput such batches give. Every policy is then
configured from the same numbers, never from the traffic it will meet:

- capacity per replica: ``target_utilization`` (0.7, Knative's and the predictive policy's
  default) times the full-batch throughput;
- the ongoing requests one replica holds at that capacity (one replica simulated at that
  rate, then Little's law): the target of the reactive (Ray) and KPA (Knative) rules, so
  that all of them aim at the same utilisation;
- the start-up time, so the predictive policy and the oracle look far enough ahead.

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
from aiscale.plan.profile import ModelProfile
from aiscale.plan.simulator import simulate
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

POLICY_NAMES: tuple[str, ...] = ("static", "reactive", "kpa", "predictive", "oracle")
#: Largest batch considered (the profile measures 1..128).
MAX_BATCH_LIMIT = 128


@dataclass(frozen=True, slots=True)
class ReplicaSizing:
    """How one replica of ``profile`` is run to meet ``slo_p99_ms``."""

    profile: ModelProfile
    slo_p99_ms: float
    max_batch_size: int
    max_batch_delay_s: float
    #: Requests/s with full batches of ``max_batch_size``.
    full_capacity_per_s: float
    target_utilization: float
    startup_s: float

    @property
    def capacity_per_s(self) -> float:
        """Requests/s one replica is planned to serve (at the target utilisation)."""
        return self.full_capacity_per_s * self.target_utilization

    def ongoing_at_target(self, num_requests: int = 20_000, seed: int = 0) -> float:
        """Requests in one replica (queued plus in a batch) when it serves ``capacity_per_s``.

        A batching replica's concurrency is far from linear in its load (batches stay small,
        then grow quickly near the knee), so no closed formula is trusted here: one replica is
        simulated exactly on ``num_requests`` Poisson arrivals at ``capacity_per_s`` (seeded,
        so the answer is a pure function of the profile) and Little's law gives the mean
        number in the system: ``rate * mean latency``.
        """
        rate = self.capacity_per_s
        rng = np.random.default_rng(seed)
        times = np.cumsum(rng.exponential(1.0 / rate, num_requests))
        duration = float(times[-1]) + 1e-6
        config = SimulationConfig(
            profile=self.profile,
            max_batch_size=self.max_batch_size,
            max_batch_delay_s=self.max_batch_delay_s,
            max_queue=num_requests,
            initial_replicas=1,
            decision_interval_s=duration,
            mode="exact",
        )
        result = simulate(Arrivals(times, duration), StaticPolicy(StaticConfig(1)), config)
        mean_s = result.mean_ms / 1000.0
        server = self.profile.server
        if server is not None:
            # The per-request overhead is spent outside the replica (HTTP, gateway): the
            # ongoing count a policy sees holds only the queued and batched requests.
            mean_s -= server.mean_overhead_s * float(server.overhead_scale(rate))
            if server.disk is not None:  # the capture commit comes after the batch, too
                mean_s -= server.disk.mean_wait_s
        return max(1.0, rate * mean_s)


def served_capacity_per_s(profile: ModelProfile, batch_size: int) -> float:
    """Requests/s one replica serves with full batches of ``batch_size`` in the server.

    With server terms the batch takes ``latency(b) * (s0 + s1 * c)`` at the rate ``c`` it
    serves, so ``c`` solves ``s1 * latency * c**2 + s0 * latency * c - b = 0``; without,
    ``b / latency(b)``.
    """
    latency = profile.mean_latency_s(batch_size)
    server = profile.server
    if server is None:
        return batch_size / latency
    s0, s1 = server.model_slowdown, server.model_slowdown_per_rps
    if s1 <= 0:
        return batch_size / (latency * s0)
    a, b = s1 * latency, s0 * latency
    return (-b + math.sqrt(b * b + 4 * a * batch_size)) / (2 * a)


def size_replica(
    profile: ModelProfile,
    slo_p99_ms: float,
    *,
    target_utilization: float = 0.7,
    max_batch_delay_s: float = 0.010,
    startup_s: float | None = None,
    max_batch_size: int | None = None,
) -> ReplicaSizing:
    """The largest batch ``b <= 128`` with ``2 * latency(b) + delay <= SLO`` and its capacity.

    With server terms (``profile.server``) the latency is the one served at full capacity
    (``served_capacity_per_s``), and the SLO budget also pays the per-request overhead's
    99th percentile at that rate. ``max_batch_size`` fixes the batch instead (as ``aiscale
    serve --max-batch-size`` does; the SLO then only scores the result). Raises
    ``InvalidInput`` (field ``slo_p99_ms``) when even a batch of one cannot meet it.
    """
    if slo_p99_ms <= 0:
        raise InvalidInput("the SLO must be > 0 ms", field="slo_p99_ms")
    if not 0 < target_utilization <= 1:
        raise InvalidInput("must be in (0, 1]", field="target_utilization")
    budget_s = slo_p99_ms / 1000.0 - max_batch_delay_s
    server = profile.server
    capacity = {b: served_capacity_per_s(profile, b) for b in range(1, MAX_BATCH_LIMIT + 1)}

    def cost_s(b: int) -> float:
        """Two served batches of ``b`` plus the overhead's p99, at full capacity."""
        if server is None:
            return 2 * profile.mean_latency_s(b)
        rate = capacity[b]
        overhead = float(server.overhead_at(0.99)) * float(server.overhead_scale(rate))
        return 2 * profile.mean_latency_s(b) * server.slowdown(rate) + overhead

    if max_batch_size is not None:
        if not 1 <= max_batch_size <= MAX_BATCH_LIMIT:
            raise InvalidInput(f"must be in 1..{MAX_BATCH_LIMIT}", field="max_batch_size")
        fitting = [max_batch_size]
    else:
        fitting = [b for b in range(1, MAX_BATCH_LIMIT + 1) if cost_s(b) <= budget_s]
    if not fitting:
        raise InvalidInput(
            f"{profile.model} on {profile.hardware} needs {cost_s(1) * 1000:.0f} ms"
            f" for two batches of one; the SLO of {slo_p99_ms:g} ms cannot be met",
            field="slo_p99_ms",
        )
    # The throughput can peak below the largest fitting batch (a measured dip); take the best.
    best = max(fitting, key=lambda b: (capacity[b], b))
    return ReplicaSizing(
        profile=profile,
        slo_p99_ms=slo_p99_ms,
        max_batch_size=best,
        max_batch_delay_s=max_batch_delay_s,
        full_capacity_per_s=capacity[best],
        target_utilization=target_utilization,
        startup_s=profile.startup_s if startup_s is None else startup_s,
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


def build_policy(
    name: str,
    sizing: ReplicaSizing,
    counts: ArrivalCounts,
    *,
    decision_interval_s: float = 10.0,
    min_replicas: int = 1,
    num_replicas: int | None = None,
) -> ScalingPolicy[Any]:
    """The policy ``name`` with the defaults of the module docstring.

    ``counts`` is what the oracle knows (all arrivals) and what ``static`` is sized for when
    ``num_replicas`` is not given (its peak). Raises ``InvalidInput`` (field ``policy``) for
    an unknown name.
    """
    if name == "static":
        count = peak_replicas(sizing, counts, decision_interval_s)
        return StaticPolicy(StaticConfig(count if num_replicas is None else num_replicas))
    if name == "reactive":
        return ReactivePolicy(reactive_config(sizing, min_replicas=min_replicas))
    if name == "kpa":
        return KpaPolicy(
            KpaConfig(
                # The target already holds the utilisation; Knative's 0.7 is not applied twice.
                target_concurrency=sizing.ongoing_at_target(),
                target_utilization=1.0,
                min_replicas=min_replicas,
                max_replicas=100_000,
            )
        )
    if name == "predictive":
        return PredictivePolicy(
            PredictiveConfig(
                reactive=reactive_config(sizing, min_replicas=min_replicas),
                capacity_per_replica_per_s=sizing.capacity_per_s,
                target_utilization=sizing.target_utilization,
                startup_s=sizing.startup_s,
            )
        )
    if name == "oracle":
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
