"""Tables and invariants for the pure autoscaling policies."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiscale.errors import ConfigError
from aiscale.scaling.policies import (
    KpaConfig,
    KpaPolicy,
    OracleConfig,
    OraclePolicy,
    PredictiveConfig,
    PredictivePolicy,
    ReactiveConfig,
    ReactivePolicy,
    ScalingObservation,
    ScalingPolicy,
    StaticConfig,
    StaticPolicy,
    desired_replicas,
    make_policy,
    oracle_schedule,
)


def observe(
    now_s: float,
    replicas: int,
    ongoing: int,
    *,
    ready: int | None = None,
    history: tuple[tuple[float, float], ...] = (),
    rate: float = 0.0,
) -> ScalingObservation:
    return ScalingObservation(
        now_s=now_s,
        num_replicas=replicas,
        num_ready=replicas if ready is None else ready,
        num_starting=0 if ready is None else replicas - ready,
        num_in_flight=ongoing,
        num_queued=0,
        arrival_rate_per_s=rate,
        completed_rate_per_s=rate,
        arrival_history=history,
    )


def run_closed_loop(
    policy: ScalingPolicy[Any],
    load: list[int],
    interval_s: float,
    start: int,
    *,
    rate: float = 0.0,
) -> list[int]:
    """Drive a policy with ``load[i]`` ongoing requests (and ``rate`` arrivals/s) at
    ``i * interval_s``, replicas ready as soon as asked (the policy's own decisions feed the
    next observation)."""
    state = policy.initial_state()
    replicas = start
    targets = []
    for i, ongoing in enumerate(load):
        observation = observe(i * interval_s, replicas, ongoing, rate=rate)
        decision, state = policy.decide(observation, state)
        replicas = decision.target_replicas
        targets.append(replicas)
    return targets


def test_static_always_returns_its_count() -> None:
    """The static policy ignores load."""
    policy = StaticPolicy(StaticConfig(3))
    for ongoing in (0, 5, 10_000):
        decision, _ = policy.decide(observe(1.0, 1, ongoing), None)
        assert decision.target_replicas == 3


@pytest.mark.parametrize(
    ("ongoing", "ready", "target", "smoothing", "expected"),
    [
        (0, 1, 2.0, 1.0, 0),
        (2, 1, 2.0, 1.0, 1),
        (3, 1, 2.0, 1.0, 2),
        (20, 2, 2.0, 1.0, 10),
        (20, 2, 2.0, 0.5, 6),  # 2 * (1 + (5 - 1) * 0.5)
        (4, 4, 2.0, 1.0, 2),
        (4, 4, 2.0, 0.5, 3),  # 4 * (1 + (0.5 - 1) * 0.5)
    ],
)
def test_reactive_wish_follows_ray_formula(
    ongoing: int, ready: int, target: float, smoothing: float, expected: int
) -> None:
    """The raw wish is ceil(ready * (1 + (ongoing / (target * ready) - 1) * smoothing))."""
    config = ReactiveConfig(
        target_ongoing_requests=target,
        upscale_smoothing_factor=smoothing,
        downscale_smoothing_factor=smoothing,
    )
    assert desired_replicas(config, observe(0.0, ready, ongoing)) == expected


observations = st.builds(
    observe,
    now_s=st.floats(0, 1e6),
    replicas=st.integers(0, 60),
    ongoing=st.integers(0, 5000),
)


@settings(max_examples=60, deadline=None)
@given(
    seq=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 60)), min_size=1, max_size=30),
    min_replicas=st.integers(0, 5),
    extra=st.integers(1, 20),
    kind=st.sampled_from(["reactive", "kpa"]),
)
def test_target_stays_within_bounds(
    seq: list[tuple[int, int]], min_replicas: int, extra: int, kind: str
) -> None:
    """min_replicas <= target <= max_replicas for any observation sequence."""
    max_replicas = min_replicas + extra
    policy = make_policy(
        kind,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        **(
            {"upscale_delay_s": 5.0, "downscale_delay_s": 20.0}
            if kind == "reactive"
            else {"target_concurrency": 10.0}
        ),
    )
    state = policy.initial_state()
    for i, (ongoing, replicas) in enumerate(seq):
        decision, state = policy.decide(observe(i * 2.0, replicas, ongoing), state)
        assert min_replicas <= decision.target_replicas <= max_replicas


@pytest.mark.parametrize("kind", ["reactive", "kpa", "predictive"])
def test_no_flapping_on_steady_load(kind: str) -> None:
    """Under constant load, once settled, the target does not change."""
    all_knobs: dict[str, dict[str, Any]] = {
        "reactive": {
            "target_ongoing_requests": 4.0,
            "upscale_delay_s": 10.0,
            "downscale_delay_s": 60.0,
            "max_replicas": 50,
        },
        "kpa": {"target_concurrency": 4.0, "target_utilization": 1.0, "max_replicas": 50},
        "predictive": {
            "reactive": {
                "target_ongoing_requests": 4.0,
                "upscale_delay_s": 10.0,
                "downscale_delay_s": 60.0,
                "max_replicas": 50,
            },
            "capacity_per_replica_per_s": 10.0,
        },
    }
    knobs = all_knobs[kind]
    # 95/s: what ten replicas of 10/s serve (the guarded predictive's ceiling reads it).
    targets = run_closed_loop(make_policy(kind, **knobs), [37] * 360, 2.0, 1, rate=95.0)
    settled = targets[60:]
    assert len(set(settled)) == 1
    assert settled[0] == 10  # ceil(37 / 4)


def test_reactive_scales_up_after_the_delay_and_not_before() -> None:
    """A load step is acted on once it has held for upscale_delay_s, not earlier."""
    policy = ReactivePolicy(
        ReactiveConfig(target_ongoing_requests=2.0, upscale_delay_s=30.0, downscale_delay_s=600.0)
    )
    load = [2] * 50 + [20] * 50  # the step comes at t = 100 s (interval 2 s)
    targets = run_closed_loop(policy, load, 2.0, 1)
    first_up = next(i for i, n in enumerate(targets) if n > 1) * 2.0
    assert 100.0 + 30.0 <= first_up <= 100.0 + 30.0 + 2.0
    assert targets[-1] == 10


def test_reactive_downscale_waits_for_its_delay() -> None:
    """Load that drops is followed down only after downscale_delay_s."""
    policy = ReactivePolicy(
        ReactiveConfig(target_ongoing_requests=2.0, upscale_delay_s=0.0, downscale_delay_s=60.0)
    )
    targets = run_closed_loop(policy, [20] * 10 + [2] * 40, 2.0, 10)
    first_down = next(i for i, n in enumerate(targets) if n < 10) * 2.0
    assert 20.0 + 60.0 <= first_down <= 20.0 + 62.0


def test_reactive_scale_to_zero_and_activation() -> None:
    """min_replicas=0: one idle replica goes to zero after the idle timeout; a request at zero
    activates the deployment at once."""
    policy = ReactivePolicy(
        ReactiveConfig(
            min_replicas=0,
            downscale_delay_s=60.0,
            scale_to_zero_delay_s=120.0,
            upscale_delay_s=30.0,
        )
    )
    targets = run_closed_loop(policy, [0] * 100, 2.0, 1)
    first_zero = targets.index(0) * 2.0
    assert 120.0 <= first_zero <= 122.0
    decision, _ = policy.decide(observe(500.0, 0, 1), policy.initial_state())
    assert decision.target_replicas == 1
    assert decision.reason == "activate from zero"


def test_kpa_panics_on_a_burst() -> None:
    """A burst that doubles the panic-window wish panics at once and scales up without
    waiting for the stable window; panic never scales down."""
    policy = KpaPolicy(KpaConfig(target_concurrency=10.0, target_utilization=1.0))
    state = policy.initial_state()
    replicas = 2
    for i in range(60):  # a calm minute at the right size
        decision, state = policy.decide(observe(i * 2.0, replicas, 20), state)
        replicas = decision.target_replicas
    assert replicas == 2
    decision, state = policy.decide(observe(122.0, 2, 200), state)
    assert decision.reason.startswith("panic")
    assert decision.target_replicas >= 8  # panic wish is ceil(avg over 6 s / 10)
    decision, state = policy.decide(observe(124.0, decision.target_replicas, 200), state)
    peak = decision.target_replicas
    decision, state = policy.decide(observe(126.0, peak, 0), state)
    assert decision.target_replicas >= peak  # no scale-down while panicking


def test_kpa_stable_mode_follows_the_stable_window() -> None:
    """Without panic, the wish is ceil(stable average / (target * utilisation)),
    and scale-down is limited to halving per decision."""
    policy = KpaPolicy(KpaConfig(target_concurrency=10.0, target_utilization=0.5))
    targets = run_closed_loop(policy, [50] * 60, 2.0, 10)
    assert targets[-1] == 10
    decision, _ = policy.decide(observe(0.0, 10, 0), policy.initial_state())
    assert decision.target_replicas == 5  # floor(10 / max_scale_down_rate 2)


def test_kpa_scales_to_zero_after_grace_and_activates() -> None:
    """With min_replicas=0 KPA reaches zero only after a quiet stable window plus grace."""
    policy = KpaPolicy(KpaConfig(target_concurrency=10.0, min_replicas=0))
    targets = run_closed_loop(policy, [5] * 10 + [0] * 80, 2.0, 1)
    first_zero = targets.index(0) * 2.0
    assert first_zero == 18.0 + 60.0  # the last busy sample (t=18) left the stable window
    patient = KpaPolicy(
        KpaConfig(target_concurrency=10.0, min_replicas=0, scale_to_zero_grace_s=90.0)
    )
    targets = run_closed_loop(patient, [5] * 10 + [0] * 80, 2.0, 1)
    assert targets.index(0) * 2.0 == 20.0 + 90.0  # idle since t=20, plus the grace
    decision, _ = policy.decide(observe(1000.0, 0, 3), policy.initial_state())
    assert decision.target_replicas == 1


def daily_history(days: int, bin_s: float = 60.0) -> list[tuple[float, float]]:
    """``days`` of a day that is quiet (10/s) until 09:00 and busy (100/s) until 17:00."""
    bins = []
    for i in range(int(days * 86_400 / bin_s)):
        t = i * bin_s
        hour = (t % 86_400) / 3600
        rate = 100.0 if 9 <= hour < 17 else 10.0
        bins.append((t, rate * bin_s))
    return bins


def test_predictive_scales_before_a_known_daily_ramp() -> None:
    """Two days of a 09:00 ramp: at 08:57 on day three the predictive policy asks for the
    ramp's replicas while reactive, seeing the quiet load, does not."""
    now = 2 * 86_400 + 8 * 3600 + 58 * 60 + 30
    history = tuple(b for b in daily_history(3) if b[0] + 60 <= now)
    reactive = ReactiveConfig(target_ongoing_requests=4.0, max_replicas=100)
    policy = PredictivePolicy(
        PredictiveConfig(
            reactive=reactive, capacity_per_replica_per_s=10.0, startup_s=120.0, lookahead_s=60.0
        )
    )
    obs = observe(now, 1, 4, history=history, rate=10.0)
    decision, _ = policy.decide(obs, policy.initial_state())
    reactive_decision, _ = ReactivePolicy(reactive).decide(
        obs, ReactivePolicy(reactive).initial_state()
    )
    assert reactive_decision.target_replicas == 1
    assert decision.target_replicas == 10
    assert "daily" in decision.reason
    early = observe(now - 3600, 1, 4, history=tuple(b for b in history if b[0] + 60 <= now - 3600))
    decision_early, _ = policy.decide(early, policy.initial_state())
    assert decision_early.target_replicas == 1  # an hour earlier nothing is coming


@settings(max_examples=40, deadline=None)
@given(ongoing=st.integers(0, 2000), replicas=st.integers(1, 40), minute=st.integers(0, 1439))
def test_predictive_never_below_reactive(ongoing: int, replicas: int, minute: int) -> None:
    """Whatever the forecast, predictive asks at least what reactive asks right now."""
    now = 86_400 + minute * 60.0
    history = tuple(b for b in daily_history(2) if b[0] + 60 <= now)
    reactive = ReactiveConfig(target_ongoing_requests=4.0, upscale_delay_s=0.0, max_replicas=60)
    policy = PredictivePolicy(PredictiveConfig(reactive=reactive, capacity_per_replica_per_s=10.0))
    obs = observe(now, replicas, ongoing, history=history)
    decision, _ = policy.decide(obs, policy.initial_state())
    reactive_decision, _ = ReactivePolicy(reactive).decide(
        obs, ReactivePolicy(reactive).initial_state()
    )
    assert decision.target_replicas >= reactive_decision.target_replicas


def test_predictive_falls_back_to_reactive_when_the_forecast_is_wrong() -> None:
    """When today does not look like yesterday, the scored error switches the forecast off."""
    history = daily_history(1) + [(86_400 + m * 60.0, 600.0) for m in range(9 * 60 - 11)]
    reactive = ReactiveConfig(target_ongoing_requests=4.0, max_replicas=100)
    policy = PredictivePolicy(
        PredictiveConfig(
            reactive=reactive, capacity_per_replica_per_s=10.0, startup_s=60.0, level_window_s=600.0
        )
    )
    state = policy.initial_state()
    decision = None
    for minute in range(9 * 60 - 10, 9 * 60 + 60):  # today: the 09:00 ramp never comes
        t = 86_400 + minute * 60.0
        rate = 10.0 if minute % 2 else 60.0  # and the quiet load is erratic
        history.append((t - 60.0, rate * 60.0))
        decision, state = policy.decide(observe(t, 1, 4, history=tuple(history)), state)
    assert decision is not None
    assert "reactive" in decision.reason
    assert state.forecast_error > 0.35


def test_oracle_schedule_starts_replicas_one_startup_ahead() -> None:
    """r(t) = ceil(rate/capacity); the oracle pays max r over [t, t + startup]."""
    assert oracle_schedule([0, 0, 10, 10, 0, 0], 5.0, 1) == (0, 2, 2, 2, 0, 0)
    assert oracle_schedule([0, 0, 10, 10, 0, 0], 5.0, 0) == (0, 0, 2, 2, 0, 0)
    assert oracle_schedule([1, 12, 3], 5.0, 5, min_replicas=1) == (3, 3, 1)


def test_oracle_decides_from_its_schedule() -> None:
    """The oracle's decision is its schedule's value at now_s."""
    policy = OraclePolicy(
        OracleConfig(
            rates_per_s=(0.0, 20.0, 0.0),
            step_s=10.0,
            capacity_per_replica_per_s=10.0,
            startup_s=0.0,
        )
    )
    assert [
        policy.decide(observe(t, 1, 0), None)[0].target_replicas for t in (5.0, 15.0, 25.0, 99.0)
    ] == [0, 2, 0, 0]


def test_make_policy_names_and_errors() -> None:
    """make_policy builds each named policy and rejects unknown names and knobs."""
    for name in ("static", "reactive", "kpa", "predictive"):
        assert hasattr(make_policy(name), "decide")
    oracle = make_policy("oracle", rates_per_s=[1.0], step_s=1.0, capacity_per_replica_per_s=1.0)
    assert isinstance(oracle, OraclePolicy)
    with pytest.raises(ConfigError) as unknown:
        make_policy("magic")
    assert unknown.value.field == "policy"
    with pytest.raises(ConfigError):
        make_policy("reactive", no_such_knob=1)
    with pytest.raises(ConfigError) as bounds:
        make_policy("kpa", min_replicas=5, max_replicas=2)
    assert bounds.value.field == "max_replicas"


def test_policies_import_nothing_heavy() -> None:
    """Importing the policies loads none of starlette, sqlalchemy, redis, ray, uvicorn."""
    code = (
        "import sys, aiscale.scaling.policies\n"
        "bad = [m for m in ('starlette', 'sqlalchemy', 'redis', 'ray', 'uvicorn', 'numpy')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_oracle_covers_the_busiest_step_until_the_next_decision() -> None:
    """With a decision interval longer than its step, the oracle provisions for the busiest
    step before its next decision."""
    policy = OraclePolicy(
        OracleConfig(
            rates_per_s=(0.0, 0.0, 30.0, 0.0),
            step_s=1.0,
            capacity_per_replica_per_s=10.0,
            startup_s=0.0,
            decision_interval_s=3.0,
        )
    )
    assert policy.target_at(0.0) == 3
    assert policy.target_at(3.0) == 0
