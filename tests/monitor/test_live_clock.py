"""The live monitor on a ``ManualClock`` and a real in-memory ``Fleet``: one tick per interval
the clock crosses, stored timestamps from the clock's wall time, and actions that reach the
serving side only through the fleet (``scale`` with a ``monitor:`` cause, ``set_shedding``).
No test here sleeps."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from aiscale.contracts.clock import ManualClock
from aiscale.monitor.config import MonitorConfig
from aiscale.monitor.live import LiveMonitor
from tests.fleets import MemoryFleet, ScaleCall

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


@pytest.fixture(autouse=True)
def _no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor must wait on its clock only: a real ``asyncio.sleep`` with a delay fails
    the test."""
    real_sleep = asyncio.sleep
    test_thread = threading.current_thread()

    async def zero_only(delay: float, result: Any = None) -> Any:
        if threading.current_thread() is not test_thread:
            # servers other tests left running in their own threads keep their real sleeps
            return await real_sleep(delay, result)
        assert delay == 0, f"slept {delay} s on the event loop's clock"
        return await real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", zero_only)
