"""The simulator: determinism, conservation, queueing theory, modes agreeing, oracle bound."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from aiscale.plan import (
    Arrivals,
    SimulationConfig,
    SyntheticTraffic,
    compare_modes,
    load_trace,
    profile_from_latencies,
    scale_times,
    simulate,
)
from aiscale.plan.oracle_search import search_oracle
from aiscale.scaling.policies import (
    KpaConfig,
    KpaPolicy,
    OracleConfig,
    OraclePolicy,
    ReactiveConfig,
    ReactivePolicy,
    ScalingPolicy,
    StaticConfig,
    StaticPolicy,
)
from tests.data_sets import public_file, synthetic_trace_times

#: Arrivals shaped like the Azure conversation trace, made here (tests/data_sets.py).
CONV_TIMES = synthetic_trace_times()
PROFILE = profile_from_latencies(
    "minilm", "CPU", {1: 8.0, 8: 30.0, 32: 110.0, 64: 220.0}, startup_s=5.0
)
CONFIG = SimulationConfig(
    profile=PROFILE,
    max_batch_size=64,
    decision_interval_s=10.0,
    slo_p99_ms=500.0,
    price_per_replica_hour=0.17,
)


def conv_trace(rate_scale: float, duration_s: float = 900.0) -> Arrivals:
    return scale_times(CONV_TIMES, rate_scale=rate_scale, duration_s=duration_s, seed=7)


def reactive() -> ReactivePolicy:
    return ReactivePolicy(
        ReactiveConfig(
            target_ongoing_requests=16.0,
            min_replicas=2,
            max_replicas=20,
            upscale_delay_s=10.0,
            downscale_delay_s=60.0,
        )
    )


@pytest.mark.parametrize("mode", ["exact", "aggregated"])
def test_same_input_gives_the_same_events_and_results(mode: str) -> None:
    """Same seed -> same event count and identical results (SimPy's determinism rule)."""
    config = replace(CONFIG, mode=mode)  # type: ignore[arg-type]
    first = simulate(conv_trace(20.0, 300.0), reactive(), config)
    second = simulate(conv_trace(20.0, 300.0), reactive(), config)
    assert first.num_events == second.num_events > 0
    assert first.to_json() == second.to_json()


@pytest.mark.parametrize("mode", ["exact", "aggregated"])
def test_every_arrival_is_completed_or_dropped(mode: str) -> None:
    """Conservation: completed + dropped == requests, also when a small queue overflows."""
    config = replace(CONFIG, mode=mode, max_queue=50)  # type: ignore[arg-type]
    result = simulate(conv_trace(100.0, 300.0), StaticPolicy(StaticConfig(1)), config)
    assert result.dropped > 0
    assert result.completed + result.dropped == result.requests
    assert result.slo_attainment <= result.completed / result.requests


def test_single_replica_batch_one_matches_md1_theory() -> None:
    """One replica, batch 1, fixed 10 ms service, Poisson arrivals at 70/s (rho = 0.7): the
    mean time in system is S + rho*S / (2(1 - rho)) (Pollaczek-Khinchine), within 5%."""
    profile = profile_from_latencies("fixed", "CPU", {1: 10.0, 2: 20.0})
    config = SimulationConfig(
        profile=profile, max_batch_size=1, max_queue=100_000, decision_interval_s=60.0
    )
    traffic = SyntheticTraffic(
        num_users=1,
        requests_per_user_per_day=70 * 86_400,
        peak_to_trough=1.0,
        weekend_factor=1.0,
        bursts_per_day=0.0,
        seed=11,
    )
    arrivals = traffic.arrivals(2000.0, step_s=1.0)
    result = simulate(arrivals, StaticPolicy(StaticConfig(1)), config)
    theory_ms = 10.0 + 0.7 * 10.0 / (2 * (1 - 0.7))
    assert result.mean_ms == pytest.approx(theory_ms, rel=0.05)
    assert result.p50_ms >= 10.0
    aggregated = simulate(
        arrivals, StaticPolicy(StaticConfig(1)), replace(config, mode="aggregated")
    )
    assert aggregated.mean_ms == pytest.approx(theory_ms, rel=0.15)


@pytest.mark.parametrize(
    ("rate_scale", "scale_by", "make", "p50_tol", "p99_tol"),
    [
        # The exact mode follows the live batcher (the delay counts from a free replica);
        # the aggregated approximation was fitted to the older oldest-arrival rule and has
        # not been re-fitted, hence the looser bounds at moderate load. Copied traffic: each
        # request 50-100 times within a second (bursts); Poisson traffic: the trace's
        # per-minute rate, the default scaling, on which the aggregated p99 is 33% high at
        # 100x (3 replicas near their knee) and 3% off at 50x.
        (50.0, "copy", lambda: StaticPolicy(StaticConfig(2)), 0.15, 0.5),
        (100.0, "copy", lambda: StaticPolicy(StaticConfig(3)), 0.15, 0.1),
        (50.0, "copy", reactive, 0.15, 0.5),
        (50.0, "poisson", lambda: StaticPolicy(StaticConfig(2)), 0.1, 0.1),
        (100.0, "poisson", lambda: StaticPolicy(StaticConfig(3)), 0.1, 0.4),
    ],
)
def test_aggregated_agrees_with_exact_on_a_small_run(
    rate_scale: float, scale_by: str, make: Any, p50_tol: float, p99_tol: float
) -> None:
    """On 15 minutes of the conv trace the aggregated mode is within the stated error of the
    exact mode (the tolerances are what we measured on that trace, rounded up, and reported:
    so this test needs the real trace)."""
    conv = load_trace(
        public_file("traces/AzureLLMInferenceTrace_conv.csv"),
        rate_scale=rate_scale,
        duration_s=900.0,
        scale_by=scale_by,
        seed=7,
    )
    comparison = compare_modes(conv, make, CONFIG)
    assert comparison.p50_error < p50_tol
    assert comparison.p99_error < p99_tol
    assert comparison.slo_attainment_error < 0.02
    assert comparison.replica_hours_error < 0.05


def test_replicas_take_traffic_only_after_startup() -> None:
    """A replica asked for at a decision is paid for at once and ready startup_s later."""
    config = replace(CONFIG, startup_s=25.0, initial_replicas=1)
    result = simulate(conv_trace(2.0, 120.0), StaticPolicy(StaticConfig(3)), config)
    timeline = {t: (paid, ready) for t, paid, ready in result.timeline}
    assert timeline[10.0] == (3, 1)
    assert timeline[30.0] == (3, 1)
    assert timeline[40.0] == (3, 3)


def test_scale_from_zero_serves_every_request() -> None:
    """Starting at zero replicas with scale-to-zero, the first request activates a replica
    that is ready only after its start-up time; every request completes; and steady traffic
    (a request every few seconds) never sends the deployment back to zero."""
    config = replace(CONFIG, initial_replicas=0, decision_interval_s=2.0)
    policy = ReactivePolicy(
        ReactiveConfig(
            min_replicas=0,
            target_ongoing_requests=16.0,
            upscale_delay_s=10.0,
            downscale_delay_s=30.0,
            scale_to_zero_delay_s=30.0,
        )
    )
    arrivals = conv_trace(1.0, 300.0)
    result = simulate(arrivals, policy, config)
    assert result.completed == result.requests
    assert result.timeline[0][1:] == (1, 0)  # activated at the first decision, starting
    first_ready_s = next(t for t, _, ready in result.timeline if ready)
    assert first_ready_s >= 2.0 + 5.0
    assert result.mean_ms > 0 and all(paid >= 1 for _, paid, _ in result.timeline)
    kpa = simulate(arrivals, KpaPolicy(KpaConfig(min_replicas=0, target_concurrency=16.0)), config)
    assert kpa.completed == kpa.requests


def test_result_serialises_to_json() -> None:
    """to_json carries the documented fields and the replica timeline."""
    result = simulate(conv_trace(5.0, 60.0), StaticPolicy(StaticConfig(1)), CONFIG)
    data = json.loads(result.to_json())
    for key in (
        "p50_ms",
        "p99_ms",
        "slo_attainment",
        "replica_hours",
        "cost_usd",
        "requests",
        "timeline",
    ):
        assert key in data
    assert data["cost_usd"] == pytest.approx(data["replica_hours"] * 0.17)


def test_oracle_is_a_lower_bound_at_equal_slo() -> None:
    """On bursty traffic (shaped like the Azure code trace) the searched oracle meets a 99%
    SLO with no more replica-hours than any policy that meets the same SLO, the old
    fixed-70%-capacity oracle (``oracle-70``) included, and no fewer than its own lower
    bound on capacity (the fluid bound)."""
    code = synthetic_trace_times(8_819, 3_438.0, burstiness=0.9, seed=3)
    arrivals = scale_times(code, rate_scale=10.0, duration_s=1200.0, seed=7)
    config = replace(CONFIG, startup_s=20.0, initial_replicas=2)
    rates = tuple(float(c) for c in arrivals.counts(1.0).counts)
    oracle_70 = OraclePolicy(
        OracleConfig(
            rates_per_s=rates,
            step_s=1.0,
            startup_s=20.0,
            min_replicas=1,
            capacity_per_replica_per_s=0.7 * PROFILE.max_throughput_per_s(64),
            decision_interval_s=config.decision_interval_s,
        )
    )
    policies: list[ScalingPolicy[Any]] = [
        StaticPolicy(StaticConfig(2)),
        StaticPolicy(StaticConfig(3)),
        StaticPolicy(StaticConfig(5)),
        reactive(),
        KpaPolicy(KpaConfig(target_concurrency=16.0, target_utilization=1.0)),
        KpaPolicy(KpaConfig(target_concurrency=4.0, target_utilization=1.0, max_replicas=10)),
        oracle_70,
    ]
    found = search_oracle(arrivals, config, slo_target=0.99, bisections=5)
    bound = found.result
    assert bound.slo_attainment >= 0.99
    assert found.fluid_bound_replica_hours <= bound.replica_hours + 1e-9
    meeting = 0
    for policy in policies:
        result = simulate(arrivals, policy, config)
        if result.slo_attainment >= 0.99:
            meeting += 1
            assert bound.replica_hours <= result.replica_hours
    assert meeting >= 3


def test_history_shows_policies_only_complete_past_bins() -> None:
    """arrival_history holds the prior bins and the bins completed so far, never a future one."""
    from aiscale.plan import ArrivalCounts
    from aiscale.scaling.policies import ScalingDecision, ScalingObservation

    seen: list[tuple[float, int, float]] = []

    class Recorder:
        def initial_state(self) -> None:
            return None

        def decide(
            self, observation: ScalingObservation, state: None
        ) -> tuple[ScalingDecision, None]:
            history = observation.arrival_history
            last = history[-1][0] if len(history) else float("-inf")
            seen.append((observation.now_s, len(history), last))
            return ScalingDecision(1, "record"), None

    prior = ArrivalCounts(np.full(10, 5, dtype=np.int64), 60.0)
    for mode in ("exact", "aggregated"):
        seen.clear()
        config = replace(CONFIG, mode=mode, prior_counts=prior, decision_interval_s=30.0)
        simulate(conv_trace(1.0, 300.0), Recorder(), config)
        for now, length, last in seen:
            assert last + 60.0 <= now + 1e-9
            assert length == 10 + int(now // 60)
