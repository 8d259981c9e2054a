"""The live autoscaler driven in its own time: a ``ManualClock`` and a small simulated Fleet,
no sleeps. The same ``VersionAutoscaler`` object runs the gateway's lanes."""

from __future__ import annotations

import asyncio
from typing import Any

from aiscale.contracts.clock import ManualClock
from aiscale.scaling.controller import VersionAutoscaler
from tests.scaling.fleet_sim import DEPLOYMENT, VERSION, SimulatedFleet

SEASON_S = 600.0
STEP_AT_S, STEP_FOR_S = 300.0, 60.0
BASE_PER_S, PEAK_PER_S = 2.0, 20.0
REACTIVE = {
    "target_ongoing_requests": 2.0,
    "min_replicas": 1,
    "max_replicas": 5,
    "upscale_delay_s": 10.0,
    "downscale_delay_s": 60.0,
}


def seasonal_rate(t_s: float) -> float:
    """A step to ``PEAK_PER_S`` for a minute, at the same time of every season."""
    return PEAK_PER_S if STEP_AT_S <= t_s % SEASON_S < STEP_AT_S + STEP_FOR_S else BASE_PER_S


def autoscaler(
    fleet: SimulatedFleet, clock: ManualClock, policy: str, knobs: dict[str, Any], interval_s: float
) -> VersionAutoscaler:
    return VersionAutoscaler(
        fleet, clock, DEPLOYMENT, VERSION, policy=policy, knobs=knobs, interval_s=interval_s
    )


def test_reactive_scaling_to_zero_and_a_cold_arrival_on_a_manual_clock() -> None:
    """Idle, the version goes to zero only after the scale-to-zero delay, by ``Fleet.scale``
    with an ``autoscaler:`` cause; a request arriving at zero wakes the loop at once (no
    clock time passes) and is held, then served, while a replica starts."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet = SimulatedFleet(clock, rate_at=lambda t: 0.0, startup_s=5.0)
        loop = autoscaler(
            fleet,
            clock,
            "reactive",
            {**REACTIVE, "min_replicas": 0, "scale_to_zero_delay_s": 30.0},
            1.0,
        )
        loop.start()
        try:
            await fleet.run(29.0)
            assert fleet.scales == [] and fleet.num_ready == 1
            await fleet.run(3.0)
            assert [(s.num_before, s.num_after) for s in fleet.scales] == [(1, 0)]
            assert fleet.scales[0].source == "autoscaler" and fleet.num_ready == 0
            woken_at = clock.monotonic()
            fleet.arrive(1)
            loop.wake()
            await clock.advance(0)
            assert clock.monotonic() == woken_at
            assert fleet.scales[-1].num_after == 1 and fleet.scales[-1].at_s == woken_at
            assert "activate from zero" in fleet.scales[-1].cause
            assert fleet.queue == 1  # held, not dropped, while the replica starts
            await fleet.run(6.0)
            assert fleet.queue == 0 and fleet.num_completed == 1
        finally:
            await loop.stop()

    asyncio.run(scenario())


def test_a_version_in_a_rollout_is_never_scaled_down() -> None:
    """While the version takes part in a rollout its replicas stay, whatever the load; once
    the rollout ends the policy's downscale applies again."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet = SimulatedFleet(clock, rate_at=lambda t: 0.0, num_ready=3, is_in_rollout=True)
        loop = autoscaler(fleet, clock, "reactive", REACTIVE, 5.0)
        loop.start()
        try:
            await fleet.run(300.0)
            assert fleet.scales == [] and fleet.num_ready == 3
            fleet.is_in_rollout = False
            await fleet.run(70.0)
            assert fleet.scales[-1].num_after == 1
        finally:
            await loop.stop()

    asyncio.run(scenario())


async def run_seasons(policy: str, knobs: dict[str, Any]) -> SimulatedFleet:
    clock = ManualClock()
    fleet = SimulatedFleet(clock, rate_at=seasonal_rate, service_s=0.1, startup_s=30.0)
    loop = autoscaler(fleet, clock, policy, knobs, 10.0)
    loop.start()
    try:
        await fleet.run(3 * SEASON_S)
    finally:
        await loop.stop()
    return fleet


def test_the_same_loop_in_simulated_time_scales_ahead_of_a_seasonal_step() -> None:
    """Run in simulated time, the predictive autoscaler, from the second season on, adds
    replicas before the step (a seasonal forecast from the history it kept), so they are ready
    when the step comes; the reactive one adds them only after the step has started."""
    predictive = asyncio.run(
        run_seasons(
            "predictive",
            {
                "reactive": REACTIVE,
                "season_s": SEASON_S,
                "startup_s": 30.0,
                "lookahead_s": 20.0,
                "level_window_s": 60.0,
                "max_forecast_error": 10.0,
            },
        )
    )
    reactive = asyncio.run(run_seasons("reactive", REACTIVE))
    start = predictive.start_s
    for season in (1, 2):
        step_s = season * SEASON_S + STEP_AT_S
        ups = [
            s
            for s in predictive.scales
            if s.num_after > s.num_before and step_s - 120 <= s.at_s - start < step_s
        ]
        assert ups and all("seasonal" in s.cause and "forecast" in s.cause for s in ups), (
            predictive.scales
        )
        assert predictive.ready_at(step_s) >= 3  # 20/s at 0.7 of 10/s per replica
        first_reactive_up = min(
            s.at_s - reactive.start_s
            for s in reactive.scales
            if s.num_after > s.num_before and s.at_s - reactive.start_s >= season * SEASON_S
        )
        assert first_reactive_up >= step_s
        assert reactive.ready_at(step_s) == 1


def test_a_restarted_autoscaler_forecasts_from_the_stored_history() -> None:
    """After a restart the history comes back from the metrics history (wall-clock points):
    the predictive autoscaler then scales ahead of the step in its *first* season, where one
    that starts empty can only react to it."""
    knobs = {
        "reactive": REACTIVE,
        "season_s": SEASON_S,
        "startup_s": 30.0,
        "lookahead_s": 20.0,
        "level_window_s": 60.0,
        "max_forecast_error": 10.0,
    }

    async def first_season(with_history: bool) -> tuple[SimulatedFleet, VersionAutoscaler]:
        clock = ManualClock()
        fleet = SimulatedFleet(clock, rate_at=seasonal_rate, service_s=0.1, startup_s=30.0)
        asked: list[tuple[float, float, float]] = []

        async def stored(start_s: float, end_s: float, step_s: float) -> list[tuple[float, float]]:
            # One earlier season of the same traffic, ending where this run starts; the
            # stored times are unix seconds, phase-aligned with the run's seasons.
            asked.append((start_s, end_s, step_s))
            now = clock.time()
            return [(now - SEASON_S + k * 10.0, seasonal_rate(k * 10.0)) for k in range(60)]

        loop = VersionAutoscaler(
            fleet, clock, DEPLOYMENT, VERSION, policy="predictive", knobs=knobs,
            interval_s=10.0, history_source=stored if with_history else None,
        )
        loop.start()
        try:
            await fleet.run(SEASON_S)
        finally:
            await loop.stop()
        if with_history:
            start_s, end_s, step_s = asked[0]
            assert end_s - start_s >= 7 * 24 * 3600 * 0.99 and step_s >= 10.0
        return fleet, loop

    restored, loop = asyncio.run(first_season(with_history=True))
    assert loop.num_restored_points == 60
    ups = [
        s for s in restored.scales
        if s.num_after > s.num_before and STEP_AT_S - 120 <= s.at_s - restored.start_s < STEP_AT_S
    ]
    assert ups and all("forecast" in s.cause for s in ups), restored.scales
    assert restored.ready_at(STEP_AT_S) >= 3
    empty, _ = asyncio.run(first_season(with_history=False))
    assert empty.ready_at(STEP_AT_S) == 1
