"""The live monitor on a ``ManualClock`` and a real in-memory ``Fleet``: one tick per interval
the clock crosses, stored timestamps from the clock's wall time, and actions that reach the
serving side only through the fleet (``scale`` with a ``monitor:`` cause, ``set_shedding``).
No test here sleeps."""

from __future__ import annotations

import asyncio

import pytest

from aiscale.contracts.clock import ManualClock
from aiscale.monitor.config import MonitorConfig
from aiscale.monitor.live import LiveMonitor
from aiscale.monitor.snapshot import build_snapshot
from tests.fleets import MemoryFleet, ScaleCall

#: Loops here wait on their ``ManualClock`` only (``tests/conftest.py``).
pytestmark = pytest.mark.usefixtures("no_real_sleep")

CONFIG = MonitorConfig.model_validate({
    "interval_s": 1.0,
    "group_wait_s": 0,
    "rules": [{"name": "errors", "signal": "value:error_rate", "threshold": 0.2,
               "actions": ["scale_up", "shed"], "summary": "too many errors"}],
    "actions": {"scale_up_step": 1, "max_replicas": 3},
})


def test_each_interval_is_one_tick_stamped_with_the_clock() -> None:
    """Advancing the clock by ``k`` intervals runs ``k`` ticks; each stored point carries the
    clock's wall time and the interval's rate."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet = MemoryFleet(clock)
        fleet.deploy("web", "1")
        monitor = LiveMonitor(fleet, CONFIG, clock=clock)
        monitor.start()
        started = clock.time()
        assert monitor.started_at_s == started
        fleet.serve("web", "1", 30)
        await clock.advance(1.0)
        fleet.serve("web", "1", 60)
        await clock.advance(1.0)
        await clock.advance(1.0)
        assert monitor.num_ticks == 3
        points = monitor.history("rps", "web", "*", started, clock.time() + 1, 1.0)
        assert points == [(started + 1, 30.0), (started + 2, 60.0), (started + 3, 0.0)]
        await clock.advance(0.5)
        assert monitor.num_ticks == 3  # half an interval: no tick
        await monitor.stop()

    asyncio.run(scenario())


def test_an_alert_scales_up_and_sheds_through_the_fleet_until_it_resolves() -> None:
    """A tick that sees 50 % errors fires the rule; its actions add a replica to the primary
    (``Fleet.scale`` with the rule as cause) and turn shedding on; the first clean interval
    resolves the alert and turns shedding off. The audit log has all three, in order."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet = MemoryFleet(clock)
        fleet.deploy("web", "1")
        monitor = LiveMonitor(fleet, CONFIG, clock=clock)
        monitor.start()
        fleet.serve("web", "1", 100)
        await clock.advance(1.0)
        assert not fleet.scales and not fleet.snapshot("web")[0].is_shedding
        fleet.serve("web", "1", 100, num_errors=50)
        await clock.advance(1.0)
        (scaled,) = fleet.scales
        assert scaled == ScaleCall("web", "1", 2, scaled.cause)
        assert scaled.cause.startswith("monitor: errors: ")
        (web,) = fleet.snapshot("web")
        assert web.is_shedding and web.num_wanted == 2
        assert web.last_scale is not None and web.last_scale.source == "monitor"
        assert web.last_scale.at_s == clock.monotonic()
        fleet.serve("web", "1", 100)
        await clock.advance(1.0)
        assert not fleet.snapshot("web")[0].is_shedding
        outcomes = sorted((e.action, e.outcome) for e in monitor.actions.entries)
        assert outcomes == [("scale_up", "done"), ("shed_low_priority", "done"),
                            ("shed_low_priority", "ended")]
        await monitor.stop()

    asyncio.run(scenario())


def test_rollout_actions_are_skipped_without_a_rollout() -> None:
    """``rollback_canary`` with no rollout commands on this server is recorded as skipped,
    never raised."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet = MemoryFleet(clock)
        fleet.deploy("web", "1")
        config = CONFIG.model_copy(update={"rules": (CONFIG.rules[0].model_copy(
            update={"actions": ("rollback_canary",)}),)})
        monitor = LiveMonitor(fleet, config, clock=clock)
        monitor.start()
        fleet.serve("web", "1", 100, num_errors=90)
        await clock.advance(1.0)
        (entry,) = monitor.actions.entries
        assert (entry.action, entry.outcome, entry.detail) == (
            "rollback_canary", "skipped", "no rollout in progress")
        await monitor.stop()

    asyncio.run(scenario())


def test_an_idle_interval_shows_no_latency_on_the_card() -> None:
    """The snapshot's ``latest`` holds the latest interval's figures: after a busy interval
    its latencies, after an idle one (no requests) none, although the window's latency series
    still ends at the busy interval's point."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet = MemoryFleet(clock)
        fleet.deploy("web", "1")
        monitor = LiveMonitor(fleet, CONFIG, clock=clock)
        monitor.start()
        assert build_snapshot(monitor, 60.0, lambda _: None)["deployments"][0]["latest"] is None
        fleet.serve("web", "1", 30, latency_s=0.02)
        await clock.advance(1.0)
        (busy,) = build_snapshot(monitor, 60.0, lambda _: None)["deployments"]
        assert busy["latest"]["rps"] == 30.0 and busy["latest"]["batch_size"] == 1.0
        assert 0 < busy["latest"]["p50_ms"] <= busy["latest"]["p99_ms"] <= 25.0
        await clock.advance(1.0)
        (idle,) = build_snapshot(monitor, 60.0, lambda _: None)["deployments"]
        assert idle["latest"] == {"rps": 0.0, "p50_ms": None, "p99_ms": None,
                                  "error_rate": 0.0, "batch_size": None, "replicas": 1.0,
                                  "queue_depth": 0.0}
        assert len(idle["series"]["p99_ms"]) == 1  # the history keeps the busy point
        await monitor.stop()

    asyncio.run(scenario())


def test_requests_for_unknown_models_are_counted_per_interval_and_over_the_window() -> None:
    """The snapshot's ``gateway`` counts requests that named no deployment: those of the
    latest interval, and those of the window; counts from before ``start`` are not in it."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet = MemoryFleet(clock)
        fleet.deploy("web", "1")
        fleet.name_unknown_model(5)  # before the monitor started
        monitor = LiveMonitor(fleet, CONFIG, unknown_models=fleet, clock=clock)
        monitor.start()
        fleet.name_unknown_model(3)
        await clock.advance(1.0)
        gateway = build_snapshot(monitor, 60.0, lambda _: None)["gateway"]
        assert gateway == {"unknown_model_requests": 3, "unknown_model_requests_in_window": 3}
        fleet.name_unknown_model(2)
        await clock.advance(1.0)
        await clock.advance(1.0)
        gateway = build_snapshot(monitor, 60.0, lambda _: None)["gateway"]
        assert gateway == {"unknown_model_requests": 0, "unknown_model_requests_in_window": 5}
        await monitor.stop()

        without = LiveMonitor(fleet, CONFIG, clock=clock)
        assert build_snapshot(without, 60.0, lambda _: None)["gateway"] == {
            "unknown_model_requests": None, "unknown_model_requests_in_window": None}

    asyncio.run(scenario())
