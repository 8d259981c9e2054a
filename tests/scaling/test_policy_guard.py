"""The platform's guard on scaling policies: demand ceiling, backlog-aware scale-up,
rate-limited steps, bounds; the predictive policy's burst headroom and guarded floor."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiscale.config import AutoscalingConfig
from aiscale.errors import ConfigError
from aiscale.plan import ArrivalCounts, SimulationConfig, profile_from_latencies, simulate
from aiscale.plan.planner import build_policy, simulation_config, size_replica
from aiscale.scaling.controller import hold_s_of
from aiscale.scaling.history import ArrivalHistory
from aiscale.scaling.observe import LoadSample, observe
from aiscale.scaling.policies import (
    DEFAULT_HEADROOM,
    GuardConfig,
    GuardedPolicy,
    GuardState,
    KpaConfig,
    KpaPolicy,
    PredictiveConfig,
    PredictivePolicy,
    ReactiveConfig,
    ReactivePolicy,
    ScalingObservation,
    ScalingPolicy,
    demand_ceiling,
    make_policy,
)
from aiscale.scaling.policies.predictive import burst_headroom_per_s

#: One replica serves 10 items/s at full throughput (0.1 s each, one at a time) and is
#: planned at 70% of it; replicas take a minute to start; decisions every 10 s.
FULL_PER_S, UTILIZATION, STARTUP_S, INTERVAL_S = 10.0, 0.7, 60.0, 10.0
CAPACITY_PER_S = FULL_PER_S * UTILIZATION
WINDOW_S = 60.0
#: The reactive rule aimed at the planned utilisation: 0.7 items per replica in service.
REACTIVE_KNOBS: dict[str, Any] = {
    "target_ongoing_requests": UTILIZATION,
    "upscale_delay_s": 30.0,
    "downscale_delay_s": 600.0,
    "max_replicas": 1000,
}
GUARD_KNOBS: dict[str, Any] = {
    "capacity_per_replica_per_s": CAPACITY_PER_S,
    "target_utilization": UTILIZATION,
    "startup_s": STARTUP_S,
}


def guarded(name: str, **extra: Any) -> ScalingPolicy[Any]:
    """``reactive`` or ``kpa`` through ``make_policy``, as the live controller builds them."""
    if name == "reactive":
        return make_policy("reactive", **REACTIVE_KNOBS, **GUARD_KNOBS, **extra)
    # KPA's target_utilization is also the guard's (one knob, one meaning): 1 x 0.7.
    return make_policy("kpa", target_concurrency=1.0, max_replicas=1000, **GUARD_KNOBS, **extra)


@dataclass
class FluidRun:
    """Per decision: time, arrival rate of the last interval, replicas paid for after the
    decision, items waiting."""

    times: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    queues: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def run_fluid(
    policy: ScalingPolicy[Any],
    rate_at: Callable[[float], float],
    duration_s: float,
    *,
    start_replicas: int,
    history_bin_s: float = 60.0,
) -> FluidRun:
    """A deterministic fluid fleet in 1 s steps: arrivals at ``rate_at(t)``, each ready
    replica serving ``FULL_PER_S``, a replica ready ``STARTUP_S`` after it is asked for, an
    unbounded queue. Every ``INTERVAL_S`` the policy decides on the observation the real
    ``observe`` makes (with an ``ArrivalHistory``, as the live controller keeps)."""
    state = policy.initial_state()
    ready, starting, queue = start_replicas, [], 0.0
    arrived = completed = busy_s = 0.0
    history = ArrivalHistory(history_bin_s)
    previous = LoadSample(0.0, ready, 0, 0, 0, 0.0, 0.0, 0.0)
    run = FluidRun()
    for k in range(int(duration_s)):
        t = float(k)
        ready += sum(1 for s in starting if s <= t)
        starting = [s for s in starting if s > t]
        if k and k % int(INTERVAL_S) == 0:
            rate = (arrived - previous.num_arrived) / INTERVAL_S
            in_service = min(ready * 1.0, rate / FULL_PER_S)  # Little: rate x 0.1 s
            sample = LoadSample(
                t, ready, len(starting), round(in_service), round(queue), arrived, completed,
                busy_s,
            )  # fmt: skip
            history.add(previous.at_s, t, arrived - previous.num_arrived)
            observation = observe(sample, previous, history)
            previous = sample
            decision, state = policy.decide(observation, state)
            change = decision.target_replicas - (ready + len(starting))
            starting += [t + STARTUP_S] * max(change, 0)
            for _ in range(max(-change, 0)):
                if starting:
                    starting.pop()
                else:
                    ready -= 1
            run.times.append(t)
            run.rates.append(rate)
            run.replicas.append(ready + len(starting))
            run.queues.append(queue)
            run.reasons.append(decision.reason)
        arriving = rate_at(t)
        served = min(queue + arriving, ready * FULL_PER_S)
        queue += arriving - served
        arrived += arriving
        completed += served
        busy_s += served / FULL_PER_S
    return run


def window_ceilings(run: FluidRun) -> list[int]:
    """The demand ceiling at each decision for the highest interval rate observed over the
    guard's window (the rate the guard may use)."""
    ceilings = []
    for t in run.times:
        peak = max(r for s, r in zip(run.times, run.rates, strict=True) if t - WINDOW_S < s <= t)
        ceilings.append(max(1, demand_ceiling(peak, CAPACITY_PER_S)))
    return ceilings


def burst(base: float, factor: float, at_s: float, for_s: float) -> Callable[[float], float]:
    return lambda t: base * factor if at_s <= t < at_s + for_s else base


# ----------------------------------------------------------------------------- the ceiling


@pytest.mark.parametrize(
    ("rate", "capacity", "kwargs", "expected"),
    [
        (100.0, 10.0, {}, 13),  # ceil(100 * 1.25 / 10)
        (100.0, 10.0, {"headroom": 0.0}, 10),
        (0.0, 10.0, {}, 0),  # no demand, no replica
        (0.01, 10.0, {}, 1),  # any demand: at least one
        (100.0, 10.0, {"backlog_items": 600.0}, 13),  # a backlog needs a drain time
        (100.0, 10.0, {"backlog_items": 600.0, "drain_within_s": 60.0}, 14),  # 110 * 1.25
        (0.0, 10.0, {"backlog_items": 5.0, "drain_within_s": 60.0}, 1),
        (80.0, 8.0, {"headroom": 0.0}, 10),  # float noise does not add a replica
    ],
)
def test_demand_ceiling_table(
    rate: float, capacity: float, kwargs: dict[str, Any], expected: int
) -> None:
    """ceil((rate + backlog / drain_within_s) * (1 + headroom) / capacity), >= 1 with demand."""
    assert demand_ceiling(rate, capacity, **kwargs) == expected
    assert DEFAULT_HEADROOM == 0.25


@pytest.mark.parametrize(
    ("args", "kwargs", "bad_field"),
    [
        ((10.0, 0.0), {}, "capacity_per_replica_per_s"),
        ((-1.0, 5.0), {}, "arrival_rate_per_s"),
        ((10.0, 5.0), {"headroom": -0.1}, "headroom"),
        ((10.0, 5.0), {"backlog_items": 5.0, "drain_within_s": 0.0}, "drain_within_s"),
        ((math.nan, 5.0), {}, "arrival_rate_per_s"),
    ],
)
def test_demand_ceiling_rejects_bad_input(
    args: tuple[float, float], kwargs: dict[str, Any], bad_field: str
) -> None:
    """Bad numbers raise ConfigError naming the argument."""
    with pytest.raises(ConfigError) as error:
        demand_ceiling(*args, **kwargs)
    assert error.value.field == bad_field


# -------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("name", ["reactive", "kpa"])
def test_a_step_in_load_is_followed_and_held_under_the_ceiling(name: str) -> None:
    """A 3x step: the guarded rule reaches what the new rate keeps busy, drains the queue,
    and never pays for more than the ceiling of the rate it saw."""
    policy = guarded(name)
    run = run_fluid(policy, lambda t: 210.0 if t >= 300 else 70.0, 1500.0, start_replicas=10)
    for replicas, ceiling in zip(run.replicas, window_ceilings(run), strict=True):
        assert replicas <= ceiling
    assert run.replicas[-1] >= math.ceil(210.0 / FULL_PER_S)
    assert run.queues[-1] == pytest.approx(0.0, abs=1.0)


@pytest.mark.parametrize("name", ["reactive", "kpa", "predictive"])
def test_a_10x_burst_for_two_minutes_stays_under_the_ceiling_and_drains(name: str) -> None:
    """A 10x burst for 2 minutes: at every decision the fleet is within the demand ceiling of
    the rate observed over the window, the queue is gone a start-up time after the burst,
    and the fleet comes back down once the burst has left the window."""
    if name == "predictive":
        policy = make_policy(
            "predictive", reactive=REACTIVE_KNOBS, **GUARD_KNOBS, level_window_s=600.0
        )
    else:
        policy = guarded(name)
    run = run_fluid(policy, burst(70.0, 10.0, 600.0, 120.0), 1800.0, start_replicas=10)
    ceilings = window_ceilings(run)
    for t, replicas, ceiling in zip(run.times, run.replicas, ceilings, strict=True):
        assert replicas <= ceiling, f"{replicas} replicas > ceiling {ceiling} at t={t}"
    assert max(run.replicas) <= demand_ceiling(700.0, CAPACITY_PER_S)
    assert max(run.replicas) >= math.ceil(700.0 / FULL_PER_S)  # it did scale for the burst
    after = [q for t, q in zip(run.times, run.queues, strict=True) if t >= 720.0 + STARTUP_S]
    assert max(after) == pytest.approx(0.0, abs=1.0)
    assert run.replicas[-1] <= demand_ceiling(70.0, CAPACITY_PER_S)


def test_the_unguarded_ray_rule_runs_away_on_the_same_burst() -> None:
    """The baseline the guard exists for: Ray's rule on the same burst asks for more than
    the rate can use (its wish follows the queue), and keeps them for its downscale delay."""
    policy = make_policy("ray-serve-rule", **REACTIVE_KNOBS)
    run = run_fluid(policy, burst(70.0, 10.0, 600.0, 120.0), 1800.0, start_replicas=10)
    assert max(run.replicas) > demand_ceiling(700.0, CAPACITY_PER_S)


def observation(
    *, ready: int, rate: float, queued: int, in_flight: int = 7, starting: int = 0
) -> ScalingObservation:
    return ScalingObservation(
        now_s=1000.0,
        num_replicas=ready + starting,
        num_ready=ready,
        num_starting=starting,
        num_in_flight=in_flight,
        num_queued=queued,
        arrival_rate_per_s=rate,
        completed_rate_per_s=rate,
        mean_service_time_s=1.0 / FULL_PER_S,
    )


def test_a_backlog_that_drains_before_a_replica_starts_adds_no_replica() -> None:
    """10 replicas (100/s) at 70/s with 600 queued: it drains in 20 s < 60 s start-up, so
    the rule's wish (which reads 607 ongoing as demand) is not acted on."""
    inner = ReactivePolicy(ReactiveConfig(**{**REACTIVE_KNOBS, "upscale_delay_s": 0.0}))
    obs = observation(ready=10, rate=70.0, queued=600)
    assert inner.decide(obs, inner.initial_state())[0].target_replicas > 10
    policy = GuardedPolicy(inner, GuardConfig(**GUARD_KNOBS, max_replicas=1000))
    decision, state = policy.decide(obs, policy.initial_state())
    assert decision.target_replicas == 10
    assert "not scaled for it" in decision.reason
    assert state.assessment is not None and state.assessment.drain_s == pytest.approx(20.0)


def test_a_backlog_that_outlasts_the_start_up_adds_what_drains_it_under_the_ceiling() -> None:
    """The same fleet with 6,000 queued (200 s to drain): the guard adds replicas at once,
    even while the rule's own upscale delay is pending, and no more than the ceiling."""
    policy = guarded("reactive")
    decision, state = policy.decide(
        observation(ready=10, rate=70.0, queued=6000), policy.initial_state()
    )
    assert isinstance(state, GuardState) and state.assessment is not None
    ceiling = demand_ceiling(70.0, CAPACITY_PER_S)
    assert 10 < decision.target_replicas <= ceiling
    assert "drain it" in decision.reason


def test_a_sustained_overload_scales_to_what_the_rate_needs_and_no_further() -> None:
    """5x for good: the fleet settles at what the rate needs at the planned capacity
    (ceil(350 / 7) = 50), never above the ceiling, and the queue is gone."""
    for name in ("reactive", "kpa"):
        run = run_fluid(
            guarded(name), lambda t: 350.0 if t >= 300 else 70.0, 2400.0, start_replicas=10
        )
        assert max(run.replicas) <= demand_ceiling(350.0, CAPACITY_PER_S)
        assert run.replicas[-1] == math.ceil(350.0 / CAPACITY_PER_S)
        assert run.queues[-1] == pytest.approx(0.0, abs=1.0)


def test_steps_up_are_rate_limited() -> None:
    """One decision adds at most max_step_up_fraction of the current count (at least one)."""
    policy = guarded("reactive", max_step_up_fraction=1.0)
    decision, _ = policy.decide(
        observation(ready=4, rate=700.0, queued=100_000), policy.initial_state()
    )
    assert decision.target_replicas == 8
    one, _ = policy.decide(observation(ready=0, rate=70.0, queued=50), policy.initial_state())
    assert one.target_replicas == 1


@pytest.mark.parametrize(
    ("ready", "expected"),
    [
        (40, 36),  # shrinks, but not below what 250/s needs at 7/s a replica
        (30, 30),  # below that need already: it does not shrink further
        (20, 25),  # below what 250/s keeps busy at 10/s a replica: raised at once
    ],
)
def test_the_rate_keeps_floors_under_a_rule_that_would_shrink(ready: int, expected: int) -> None:
    """A rule on concurrency reading low ongoing counts (Knative's, here wishing 2) scales
    down no further than what the rate needs at the planned capacity (ceil(250 / 7) = 36),
    and never stays below what it keeps busy at full throughput (ceil(250 / 10) = 25)."""
    inner = KpaPolicy(KpaConfig(target_concurrency=1.0, max_replicas=1000))
    policy = GuardedPolicy(inner, GuardConfig(**GUARD_KNOBS, max_replicas=1000))
    obs = observation(ready=ready, rate=250.0, queued=0, in_flight=2)
    assert inner.decide(obs, inner.initial_state())[0].target_replicas < min(ready, 25)
    decision, _ = policy.decide(obs, policy.initial_state())
    assert decision.target_replicas == expected


def test_the_ceiling_takes_replicas_away_only_after_a_full_window() -> None:
    """A first observation (no rate yet, as after a restart) cannot empty a fleet; once the
    guard has watched a whole window of low arrivals, the ceiling applies."""
    policy = make_policy(
        "reactive", **{**REACTIVE_KNOBS, "downscale_delay_s": 10_000.0}, **GUARD_KNOBS
    )
    state = policy.initial_state()
    targets = []
    for i in range(10):
        obs = replace(observation(ready=20, rate=7.0, queued=0, in_flight=1), now_s=i * 10.0)
        decision, state = policy.decide(obs, state)
        targets.append(decision.target_replicas)
    assert targets[0] == 20
    assert targets[-1] == demand_ceiling(7.0, CAPACITY_PER_S) == 2


def test_a_guarded_rule_still_scales_to_zero_and_wakes() -> None:
    """With min_replicas=0 the guard leaves going to zero to the rule (after its idle delay)
    and lets the first request wake the deployment at once."""
    policy = make_policy(
        "reactive", min_replicas=0, downscale_delay_s=60.0, scale_to_zero_delay_s=120.0,
        **GUARD_KNOBS,
    )  # fmt: skip
    state = policy.initial_state()
    targets = []
    replicas = 1
    for i in range(30):
        idle = replace(
            observation(ready=replicas, rate=0.0, queued=0, in_flight=0), now_s=i * 10.0
        )
        decision, state = policy.decide(idle, state)
        replicas = decision.target_replicas
        targets.append(replicas)
    assert targets[:12] == [1] * 12 and targets[-1] == 0
    woken = replace(observation(ready=0, rate=0.0, queued=1, in_flight=0), now_s=400.0)
    decision, _ = policy.decide(woken, state)
    assert decision.target_replicas == 1


@settings(max_examples=80, deadline=None)
@given(
    seq=st.lists(
        st.tuples(
            st.integers(0, 5000), st.integers(0, 60), st.floats(0, 2000), st.integers(0, 20000)
        ),
        min_size=1,
        max_size=30,
    ),
    min_replicas=st.integers(0, 5),
    extra=st.integers(1, 80),
    kind=st.sampled_from(["reactive", "kpa"]),
    has_capacity=st.booleans(),
)
def test_bounds_and_ceiling_hold_for_any_observations(
    seq: list[tuple[int, int, float, int]],
    min_replicas: int,
    extra: int,
    kind: str,
    has_capacity: bool,
) -> None:
    """min_replicas <= target <= max_replicas always; with a capacity, the target is never
    above the ceiling of the window's rate (or the bounds' floor), nor above the current
    count plus the step limit (unless min_replicas asks for more)."""
    max_replicas = min_replicas + extra
    knobs: dict[str, Any] = {"min_replicas": min_replicas, "max_replicas": max_replicas}
    if has_capacity:
        knobs["capacity_per_replica_per_s"] = CAPACITY_PER_S
    if kind == "reactive":
        knobs |= {"upscale_delay_s": 0.0, "downscale_delay_s": 20.0}
    else:
        knobs |= {"target_concurrency": 10.0}
    policy = make_policy(kind, **knobs)
    state = policy.initial_state()
    for i, (ongoing, replicas, rate, queued) in enumerate(seq):
        obs = ScalingObservation(
            now_s=i * 10.0,
            num_replicas=replicas,
            num_ready=replicas,
            num_starting=0,
            num_in_flight=ongoing,
            num_queued=queued,
            arrival_rate_per_s=rate,
            completed_rate_per_s=rate,
        )
        decision, state = policy.decide(obs, state)
        target = decision.target_replicas
        assert min_replicas <= target <= max_replicas
        assert target <= max(min_replicas, replicas + max(1, 3 * replicas))
        assessment = state.assessment
        if has_capacity and assessment is not None and assessment.ceiling is not None:
            limit = assessment.ceiling if assessment.is_watched else max(
                assessment.ceiling, replicas
            )
            assert target <= max(min_replicas, limit)


# ------------------------------------------------------------------------- construction


def test_make_policy_guards_the_platform_rules_and_not_the_baselines() -> None:
    """``reactive``/``kpa`` are the guarded rules with the guard's bounds taken from the
    rule's; ``ray-serve-rule``/``knative-rule`` are the bare rules and refuse guard knobs; a
    knob both take (KPA's target_utilization) reaches both."""
    reactive = make_policy("reactive", min_replicas=2, max_replicas=9, ceiling_headroom=0.5)
    assert isinstance(reactive, GuardedPolicy) and isinstance(reactive.inner, ReactivePolicy)
    assert (reactive.config.min_replicas, reactive.config.max_replicas) == (2, 9)
    assert reactive.config.ceiling_headroom == 0.5
    kpa = make_policy("kpa", target_utilization=0.5)
    assert isinstance(kpa, GuardedPolicy) and isinstance(kpa.inner, KpaPolicy)
    assert kpa.inner.config.target_utilization == kpa.config.target_utilization == 0.5
    assert isinstance(make_policy("ray-serve-rule"), ReactivePolicy)
    assert isinstance(make_policy("knative-rule"), KpaPolicy)
    predictive = make_policy("predictive", rate_window_s=30.0, capacity_per_replica_per_s=5.0)
    assert isinstance(predictive, PredictivePolicy) and predictive.config.guard is not None
    assert predictive.config.guard.rate_window_s == 30.0
    for name, knobs in (
        ("ray-serve-rule", {"ceiling_headroom": 0.1}),
        ("knative-rule", {"startup_s": 5.0}),
        ("reactive", {"no_such_knob": 1}),
        ("predictive", {"no_such_knob": 1}),
    ):
        with pytest.raises(ConfigError):
            make_policy(name, **knobs)
    with pytest.raises(ConfigError) as bad:
        make_policy("reactive", max_step_up_fraction=0.0)
    assert bad.value.field == "max_step_up_fraction"
    assert hold_s_of(reactive) == reactive.inner.config.downscale_delay_s


def test_the_config_file_path_carries_the_guard_knobs() -> None:
    """autoscaling.policy and autoscaling.knobs from the config reach make_policy as the
    live controller passes them: the new names validate, the guard's knobs arrive."""
    for name in ("reactive", "kpa", "predictive", "ray-serve-rule", "knative-rule"):
        knobs: dict[str, Any] = {"max_replicas": 7} if name != "predictive" else {}
        if name in ("reactive", "kpa"):
            knobs |= {"capacity_per_replica_per_s": 12.0, "rate_window_s": 30.0}
        config = AutoscalingConfig(policy=name, knobs=knobs)  # type: ignore[arg-type]
        policy = make_policy(config.policy, **config.knobs)
        if isinstance(policy, GuardedPolicy):
            assert policy.config.capacity_per_replica_per_s == 12.0
            assert policy.config.rate_window_s == 30.0
            assert policy.config.max_replicas == 7


# ---------------------------------------------------------------------------- predictive


def test_burst_headroom_grows_with_shortfalls_and_is_bounded() -> None:
    """No shortfalls, no headroom; the headroom is burst_sigmas x RMS shortfall, at most
    max_burst_headroom of the peak."""
    config = PredictiveConfig(burst_sigmas=2.0, max_burst_headroom=0.5)
    assert burst_headroom_per_s(config, (), 100.0) == 0.0
    assert burst_headroom_per_s(config, ((0.0, 0.0), (60.0, 0.0)), 100.0) == 0.0
    assert burst_headroom_per_s(config, ((0.0, 3.0), (60.0, 4.0)), 100.0) == pytest.approx(
        2.0 * math.sqrt((9 + 16) / 2)
    )
    assert burst_headroom_per_s(config, ((0.0, 500.0),), 100.0) == 50.0


def test_predictive_headroom_is_nil_on_smooth_traffic_and_appears_after_bursts() -> None:
    """On a steady rate the scored shortfalls are within counting noise (no headroom); after
    an unforecast jump they are not."""
    policy = make_policy(
        "predictive", reactive=REACTIVE_KNOBS, **GUARD_KNOBS, level_window_s=600.0
    )
    assert isinstance(policy, PredictivePolicy)
    steady = run_fluid(policy, lambda t: 70.0, 3600.0, start_replicas=10)
    forecasts = [r for r in steady.reasons if "headroom" in r]
    assert forecasts and all("+ 0.0/s headroom" in r for r in forecasts)
    jumpy = run_fluid(policy, burst(70.0, 3.0, 2400.0, 600.0), 3300.0, start_replicas=10)
    headrooms = [r for r in jumpy.reasons if "headroom" in r and "+ 0.0/s headroom" not in r]
    assert headrooms


def seasonal_history(
    now_s: float, *, burst_at_s: float, season_s: float
) -> list[tuple[float, float]]:
    """Minute bins of 70/s with a 10x minute at ``burst_at_s`` in every past season."""
    bins = []
    t = 0.0
    while t + 60.0 <= now_s:
        in_burst = any(
            abs((t - burst_at_s) - k * season_s) < 1e-6 for k in range(-5, 5)
        )
        bins.append((t, (700.0 if in_burst else 70.0) * 60.0))
        t += 60.0
    return bins


@pytest.mark.parametrize("is_ceiling_from_forecast", [True, False])
def test_predictive_starts_replicas_ahead_of_a_seasonal_burst_only_when_trusted(
    is_ceiling_from_forecast: bool,
) -> None:
    """A burst that came at the same time last season: the seasonal forecast's wish is held
    to the forecast rate's ceiling (replicas ready when it comes), or with
    is_ceiling_from_forecast=False to the ceiling of the rate seen now."""
    season_s = 3600.0
    now = 2 * season_s + 1800.0 - 60.0  # a minute before this season's burst
    policy = make_policy(
        "predictive", reactive=REACTIVE_KNOBS, **GUARD_KNOBS, season_s=season_s,
        lookahead_s=60.0, is_ceiling_from_forecast=is_ceiling_from_forecast,
    )  # fmt: skip
    history = seasonal_history(now, burst_at_s=1800.0, season_s=season_s)
    obs = replace(observation(ready=10, rate=70.0, queued=0), now_s=now, arrival_history=history)
    decision, _ = policy.decide(obs, policy.initial_state())
    if is_ceiling_from_forecast:
        assert decision.target_replicas > demand_ceiling(70.0, CAPACITY_PER_S)
        assert decision.target_replicas <= demand_ceiling(700.0, CAPACITY_PER_S)
    else:
        assert decision.target_replicas <= demand_ceiling(70.0, CAPACITY_PER_S)


# ------------------------------------------------------------------------- the simulator

#: A slow model (about 11 items/s per replica at batch 8), so that a quarter of an hour of
#: traffic with a burst stays a few tens of thousands of requests.
SIM_PROFILE = profile_from_latencies("slow", "CPU", {1: 100.0, 4: 350.0, 8: 700.0}, startup_s=30.0)
SIM_SLO_MS = 2000.0


@dataclass
class Recorded:
    """A policy whose decisions are kept as ``(now_s, target)`` (the simulator's timeline
    records replicas paid for, which include one still finishing its batch)."""

    policy: ScalingPolicy[Any]
    targets: list[tuple[float, int]] = field(default_factory=list)

    def initial_state(self) -> Any:
        return self.policy.initial_state()

    def decide(self, observation: ScalingObservation, state: Any) -> tuple[Any, Any]:
        decision, state = self.policy.decide(observation, state)
        self.targets.append((observation.now_s, decision.target_replicas))
        return decision, state


@pytest.mark.parametrize("name", ["reactive", "kpa", "predictive"])
@pytest.mark.parametrize("mode", ["exact", "aggregated"])
def test_in_the_simulator_the_fleet_never_exceeds_the_ceiling(name: str, mode: str) -> None:
    """Through ``simulate`` (both modes; the planner's defaults): a quarter of an hour with a
    10x burst for two minutes. After the first window, every decision's fleet is within the
    demand ceiling of the highest interval rate over the guard's window; the unguarded Ray
    rule on the same arrivals is not."""
    sizing = size_replica(SIM_PROFILE, SIM_SLO_MS)
    base = sizing.capacity_per_s * 1.5
    rates = np.full(900, base)
    rates[300:420] *= 10.0
    counts = ArrivalCounts(np.random.default_rng(3).poisson(rates).astype(np.int64), 1.0)
    config: SimulationConfig = simulation_config(sizing, counts, mode=mode)
    policy = Recorded(build_policy(name, sizing, counts))
    result = simulate(counts, policy, config)
    interval = config.decision_interval_s
    per_interval = counts.counts.reshape(-1, int(interval)).sum(axis=1) / interval
    window = int(60.0 / interval)
    for t, target in policy.targets:
        k = int(round(t / interval))
        if k < window:
            continue
        peak = float(per_interval[k - window : k].max())
        assert target <= max(1, demand_ceiling(peak, sizing.capacity_per_s)), (t, target, peak)
    # Paid replicas include one still finishing its batch after a scale-down (exact mode).
    peak_paid = max(paid for _, paid, _ in result.timeline)
    assert peak_paid <= demand_ceiling(float(per_interval.max()), sizing.capacity_per_s)
    assert result.dropped < counts.num_requests
    if name == "reactive":
        bare = simulate(counts, build_policy("ray-serve-rule", sizing, counts), config)
        bare_peak = max(paid for _, paid, _ in bare.timeline)
        assert bare_peak > peak_paid
