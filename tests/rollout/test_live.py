"""The live rollout controller on a ``ManualClock`` and a real in-memory ``Fleet``: it steps,
waits and ends exactly when the clock says, steers traffic only through the fleet, and a
finished rollout leaves the winner primary and the loser drained. No test here sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiscale.contracts.clock import ManualClock
from aiscale.contracts.split import TrafficSplit
from aiscale.rollout.analysis import AnalysisConfig
from aiscale.rollout.controller import RolloutController, RolloutPlan, RolloutStatus
from aiscale.rollout.live import FleetTarget
from tests.fleets import MemoryFleet

#: Loops here wait on their ``ManualClock`` only (``tests/conftest.py``).
pytestmark = pytest.mark.usefixtures("no_real_sleep")


class MemoryRolloutStore:
    """The controller's ``RolloutStore`` kept in lists (the registry is not the subject)."""

    def __init__(self) -> None:
        self.progress: list[tuple[int, str, str]] = []
        self.decisions: list[tuple[int, str, str]] = []
        self.traffic: list[tuple[dict[str, float], str]] = []

    async def save_progress(
        self, rollout_id: Any, step_index: int, status: str, reason: str
    ) -> None:
        self.progress.append((step_index, status, reason))

    async def record_decision(
        self, rollout_id: Any, step_index: int, verdict: str, reason: str, numbers: dict[str, Any]
    ) -> None:
        self.decisions.append((step_index, verdict, reason))

    async def record_traffic(self, deployment: str, split: TrafficSplit, cause: str) -> None:
        self.traffic.append((dict(split.weights), cause))


PLAN = RolloutPlan(
    deployment="web",
    baseline="1",
    canary="2",
    steps=(50.0, 100.0),
    interval_s=5.0,
    min_step_duration_s=30.0,
    analysis=AnalysisConfig(min_requests=200),
)


def status_of(controller: RolloutController) -> RolloutStatus:
    """The status now (a call, so that a checker does not keep an earlier narrowing)."""
    return controller.status


async def _running(
    clock: ManualClock,
) -> tuple[MemoryFleet, MemoryRolloutStore, tuple[RolloutController, asyncio.Task[None]]]:
    fleet = MemoryFleet(clock)
    fleet.deploy("web", "1")
    await fleet.warm("web", "2")
    store = MemoryRolloutStore()
    controller = RolloutController(1, PLAN, FleetTarget(fleet, "web"), store, clock=clock)
    task = asyncio.create_task(controller.run())
    await clock.advance(0)
    return fleet, store, (controller, task)


def test_a_good_canary_is_promoted_once_the_step_lasted_its_minimum() -> None:
    """With enough traffic and no worse test, the verdict is ``wait`` until the step has
    lasted ``min_step_duration_s`` on the controller's clock, and ``promote`` from then on;
    the last step makes the canary the primary and drains the baseline through the fleet."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet, store, (controller, task) = await _running(clock)
        assert dict(fleet.split_of("web").weights) == {"1": 50.0, "2": 50.0}
        fleet.serve("web", "1", 400)
        fleet.serve("web", "2", 400)
        await clock.advance(25.0)  # 5 looks, the step is 25 s old
        assert controller.status is RolloutStatus.RUNNING
        assert controller.last_decision is not None
        assert str(controller.last_decision.verdict) == "wait"
        assert "5 s of the step's minimum duration left" in controller.reason
        await clock.advance(5.0)  # the look at 30 s
        await asyncio.wait_for(task, 5.0)
        assert status_of(controller) is RolloutStatus.PROMOTED
        assert fleet.primary_of("web") == "2"
        assert [s.version for s in fleet.snapshot("web")] == ["2"]
        (drain,) = fleet.scales
        assert (drain.version, drain.num_replicas, drain.cause) == ("1", 0, "rollout: 2 won")
        assert [t[0] for t in store.traffic] == [{"1": 50.0, "2": 50.0}, {"2": 100.0}]
        assert [d[1] for d in store.decisions] == ["wait", "promote"]

    asyncio.run(scenario())


def test_a_failing_canary_is_rolled_back_at_the_first_look_with_enough_data() -> None:
    """Errors on the canary roll it back at the look after they are counted, not before:
    until ``interval_s`` passes on the clock nothing is judged."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet, store, (controller, task) = await _running(clock)
        fleet.serve("web", "1", 300)
        fleet.serve("web", "2", 300, num_errors=60)
        await clock.advance(4.9)
        assert controller.last_decision is None and controller.status is RolloutStatus.RUNNING
        await clock.advance(0.1)
        await asyncio.wait_for(task, 5.0)
        assert status_of(controller) is RolloutStatus.ROLLED_BACK
        assert "canary is worse" in controller.reason
        assert fleet.primary_of("web") == "1"
        assert dict(fleet.split_of("web").weights) == {"1": 100.0}
        assert [s.version for s in fleet.snapshot("web")] == ["1"]
        assert [(s.version, s.num_replicas) for s in fleet.scales] == [("2", 0)]
        assert store.progress[-1][1] == "rolled_back"

    asyncio.run(scenario())


def test_a_paused_rollout_does_not_look_until_resumed() -> None:
    """While paused, time passing judges nothing; ``resume`` looks at once."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet, _, (controller, task) = await _running(clock)
        await controller.pause()
        fleet.serve("web", "1", 300)
        fleet.serve("web", "2", 300, num_errors=60)
        await clock.advance(60.0)
        assert controller.status is RolloutStatus.PAUSED and controller.last_decision is None
        await controller.resume()
        await clock.advance(0)
        await asyncio.wait_for(task, 5.0)
        assert status_of(controller) is RolloutStatus.ROLLED_BACK

    asyncio.run(scenario())
