"""The searched oracle: meets the SLO in the simulator, beats every cheaper constant fleet,
sits above its lower bounds, and replays schedules the way the search assumes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from aiscale.errors import ConfigError
from aiscale.plan import SimulationConfig, profile_from_latencies, simulate
from aiscale.plan.oracle_search import (
    OracleSearch,
    fluid_lower_bound_replica_hours,
    replay_schedule,
    search_oracle,
)
from aiscale.plan.synthetic import BurstyDay
from aiscale.plan.traffic import ArrivalCounts
from aiscale.scaling.policies import (
    OracleConfig,
    OraclePolicy,
    ScheduleConfig,
    SchedulePolicy,
    StaticConfig,
    StaticPolicy,
)

PROFILE = profile_from_latencies(
    "minilm", "CPU", {1: 8.0, 8: 30.0, 32: 110.0, 64: 220.0}, startup_s=20.0
)
CONFIG = SimulationConfig(
    profile=PROFILE,
    max_batch_size=64,
    decision_interval_s=10.0,
    slo_p99_ms=500.0,
    startup_s=20.0,
    mode="aggregated",
    step_s=1.0,
)
#: Half an hour at 500 requests/s on average, with a 5x and a 10x burst (seed 3).
DAY = BurstyDay(900_000, multipliers=(5.0, 10.0), day_s=1800.0, seed=3)
TARGET = 0.99


@pytest.fixture(scope="module")
def counts() -> ArrivalCounts:
    return DAY.counts(1.0)


@pytest.fixture(scope="module")
def oracle(counts: ArrivalCounts) -> OracleSearch:
    return search_oracle(counts, CONFIG, slo_target=TARGET, min_replicas=1)


def test_the_schedule_meets_the_slo_when_replayed(
    counts: ArrivalCounts, oracle: OracleSearch
) -> None:
    """The schedule, replayed through simulate, meets the target with the replica-hours the
    search reports: one paid count per decision interval."""
    again = replay_schedule(counts, CONFIG, oracle.schedule)
    assert again.to_json() == oracle.result.to_json()
    assert oracle.slo_attainment >= TARGET
    assert len(oracle.schedule) == 180
    assert oracle.replica_hours == pytest.approx(sum(oracle.schedule) * 10.0 / 3600.0)
    assert min(oracle.schedule) >= 1
    # The bursts need more than a few replicas, so the search had something to decide.
    assert max(oracle.schedule) >= 2 * min(oracle.schedule) + 4


def test_no_cheaper_constant_fleet_meets_the_slo(
    counts: ArrivalCounts, oracle: OracleSearch
) -> None:
    """Brute force: every constant fleet paying fewer replica-hours misses the target."""
    day_h = 1800.0 / 3600.0
    tried = 0
    for replicas in range(1, 40):
        if replicas * day_h >= oracle.replica_hours:
            break
        policy = StaticPolicy(StaticConfig(replicas))
        result = simulate(counts, policy, replace(CONFIG, initial_replicas=replicas))
        assert result.slo_attainment < TARGET, replicas
        tried += 1
    assert tried >= 2


def test_the_oracle_pays_no_more_than_the_fixed_utilisation_oracle(
    counts: ArrivalCounts, oracle: OracleSearch
) -> None:
    """The old oracle (70% planned utilisation, start-up ahead) meets the SLO here too, and
    the searched one pays less: the old one was no lower bound."""
    old = OraclePolicy(
        OracleConfig(
            rates_per_s=tuple(float(c) for c in counts.counts),
            step_s=1.0,
            capacity_per_replica_per_s=0.7 * PROFILE.max_throughput_per_s(64),
            startup_s=20.0,
            min_replicas=1,
            decision_interval_s=10.0,
        )
    )
    result = simulate(counts, old, replace(CONFIG, initial_replicas=old.target_at(0.0)))
    assert result.slo_attainment >= TARGET
    assert oracle.replica_hours < result.replica_hours


def test_lower_bounds_sit_below_the_oracle(counts: ArrivalCounts, oracle: OracleSearch) -> None:
    """fluid bound <= model bound <= oracle; the gap is their ratio, >= 1."""
    assert 0 < oracle.fluid_bound_replica_hours <= oracle.model_bound_replica_hours + 1e-9
    assert oracle.model_bound_replica_hours <= oracle.replica_hours
    assert oracle.optimality_gap == pytest.approx(
        oracle.replica_hours / oracle.model_bound_replica_hours
    )
    assert oracle.optimality_gap >= 1.0
    assert fluid_lower_bound_replica_hours(counts, CONFIG, slo_target=TARGET) == pytest.approx(
        oracle.fluid_bound_replica_hours
    )


def test_a_looser_target_needs_no_more_replicas(
    counts: ArrivalCounts, oracle: OracleSearch
) -> None:
    """At 95% the searched schedule pays no more than at 99%, and its bound is lower."""
    looser = search_oracle(counts, CONFIG, slo_target=0.95)
    assert looser.slo_attainment >= 0.95
    assert looser.replica_hours <= oracle.replica_hours
    assert looser.model_bound_replica_hours <= oracle.model_bound_replica_hours


@pytest.mark.parametrize("mode", ["aggregated", "exact"])
def test_a_replica_is_ready_once_paid_through_its_start_up(mode: str) -> None:
    """The model the search rests on: with a start-up of s intervals, the replicas ready in
    interval j are min(P[j - s .. j]) of the replayed schedule P, in both modes."""
    rng = np.random.default_rng(11)
    schedule = [int(v) for v in rng.integers(1, 5, size=30)]
    counts = ArrivalCounts(np.full(300, 20, dtype=np.int64), 1.0)
    config = replace(CONFIG, mode=mode)  # type: ignore[arg-type]
    result = replay_schedule(counts, config, schedule)
    startup = 2
    for t, paid, ready in result.timeline:
        j = round(t / 10.0)
        if j >= len(schedule):
            break
        assert paid == schedule[j]
        assert ready == min(schedule[max(0, j - startup) : j + 1]), j


def test_the_search_works_in_the_exact_mode() -> None:
    """A small day searched and judged in the exact simulator meets the target there."""
    small = BurstyDay(30_000, multipliers=(5.0,), day_s=300.0, max_burst_s=120.0, seed=2)
    counts = small.counts(1.0)
    config = replace(CONFIG, mode="exact")
    found = search_oracle(counts.to_arrivals(seed=0), config, slo_target=TARGET)
    assert found.result.mode == "exact"
    assert found.slo_attainment >= TARGET
    assert found.fluid_bound_replica_hours <= found.replica_hours


def test_schedule_policy_replays_one_entry_per_interval() -> None:
    """Entry i from i x interval on (float sums of the interval included); the last holds."""
    policy = SchedulePolicy(ScheduleConfig((3, 1, 4), 10.0))
    times = (0.0, 9.99, 10.0, 0.1 + 0.2 + 9.7, 20.0, 500.0)
    assert [policy.target_at(t) for t in times] == [3, 3, 1, 1, 4, 4]


@pytest.mark.parametrize(
    ("replicas", "interval_s", "field"),
    [((), 10.0, "replicas"), ((1, -1), 10.0, "replicas"), ((1,), 0.0, "interval_s")],
)
def test_bad_schedules_are_refused(
    replicas: tuple[int, ...], interval_s: float, field: str
) -> None:
    """An empty schedule, a negative count or a non-positive interval raise ConfigError."""
    with pytest.raises(ConfigError) as error:
        ScheduleConfig(replicas, interval_s)
    assert error.value.field == field


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"slo_target": 0.0}, "slo_target"),
        ({"min_replicas": -1}, "min_replicas"),
        ({"bisections": 0}, "bisections"),
    ],
)
def test_bad_search_settings_are_refused(
    counts: ArrivalCounts, knobs: dict[str, float], field: str
) -> None:
    """A target outside (0, 1], a negative floor or no bisections raise ConfigError naming
    the setting."""
    with pytest.raises(ConfigError) as error:
        search_oracle(counts, CONFIG, **knobs)  # type: ignore[arg-type]
    assert error.value.field == field
