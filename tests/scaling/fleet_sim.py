"""A small real ``Fleet`` for tests: one version of one deployment as a fluid queue, in the
time of a ``ManualClock`` that it advances itself (simulated time, no sleeps).

Arrivals come at ``rate_at(t)`` per second (``t`` since the fleet was made); each ready
replica serves ``1 / service_s`` items per second; a replica asked for is ready ``startup_s``
later. ``scale`` records a ``ScaleRecord`` with its cause, as the gateway does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiscale.contracts.clock import ManualClock
from aiscale.contracts.fleet import FleetSnapshot, ScaleRecord
from aiscale.contracts.histogram import latency_histogram
from aiscale.contracts.split import TrafficSplit

DEPLOYMENT, VERSION = "m", "1"


@dataclass
class SimulatedFleet:
    clock: ManualClock
    rate_at: Callable[[float], float]
    service_s: float = 0.1
    startup_s: float = 30.0
    num_ready: int = 1
    is_in_rollout: bool = False
    #: When each starting replica becomes ready.
    starting: list[float] = field(default_factory=list)
    queue: float = 0.0
    num_arrived: float = 0.0
    num_completed: float = 0.0
    busy_s: float = 0.0
    in_flight: float = 0.0
    scales: list[ScaleRecord] = field(default_factory=list)
    #: ``(t, ready)`` after every step of ``run``.
    ready_log: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start_s = self.clock.monotonic()
        self.wanted = self.num_ready + len(self.starting)

    @property
    def t_s(self) -> float:
        return self.clock.monotonic() - self.start_s

    # ----- the Fleet protocol ----------------------------------------------------------
    def snapshot(self, deployment: str | None = None) -> tuple[FleetSnapshot, ...]:
        if deployment not in (None, DEPLOYMENT):
            return ()
        return (
            FleetSnapshot(
                deployment=DEPLOYMENT,
                version=VERSION,
                lane_id=1,
                is_primary=True,
                traffic_percent=100.0,
                is_in_rollout=self.is_in_rollout,
                is_shedding=False,
                is_autoscaled=True,
                num_ready=self.num_ready,
                num_starting=len(self.starting),
                num_wanted=self.wanted,
                num_inflight_items=round(self.in_flight),
                num_queued_items=round(self.queue),
                max_queue=100_000,
                max_batch_size=1,
                max_inflight_batches=1,
                num_arrived=round(self.num_arrived),
                num_requests=round(self.num_completed),
                num_errors=0,
                latency_s=latency_histogram(),
                num_batches=round(self.num_completed),
                num_batch_items=round(self.num_completed),
                model_s=self.busy_s,
                last_scale=self.scales[-1] if self.scales else None,
            ),
        )

    async def scale(
        self, deployment: str, num_replicas: int, *, version: str | None = None, cause: str
    ) -> None:
        assert deployment == DEPLOYMENT and version in (None, VERSION)
        now = self.clock.monotonic()
        self.scales.append(ScaleRecord(cause, now, self.wanted, num_replicas))
        self.wanted = num_replicas
        missing = num_replicas - self.num_ready - len(self.starting)
        self.starting.extend([now + self.startup_s] * max(missing, 0))
        for _ in range(max(-missing, 0)):
            if self.starting:
                self.starting.pop()
            else:
                self.num_ready -= 1

    async def set_split(
        self, deployment: str, split: TrafficSplit, *, primary: str | None = None, cause: str
    ) -> None:
        raise NotImplementedError("one version only")

    def set_shedding(self, deployment: str, is_shedding: bool) -> None:
        raise NotImplementedError("no shedding here")

    async def warm(self, deployment: str, version: str) -> None:
        raise NotImplementedError("one version only")

    # ----- simulated time ----------------------------------------------------------------
    def arrive(self, num_items: float) -> None:
        """Items arriving now (on top of ``rate_at``)."""
        self.queue += num_items
        self.num_arrived += num_items

    async def run(self, duration_s: float, step_s: float = 1.0) -> None:
        """Let ``duration_s`` pass: the fluid moves a step, then the clock does (waking the
        loops whose deadlines the step crosses)."""
        end_s = self.t_s + duration_s
        while self.t_s < end_s - 1e-9:
            now = self.clock.monotonic()
            while self.starting and min(self.starting) <= now + 1e-9:
                self.starting.remove(min(self.starting))
                self.num_ready += 1
            self.arrive(self.rate_at(self.t_s) * step_s)
            served = min(self.queue, self.num_ready * step_s / self.service_s)
            self.queue -= served
            self.num_completed += served
            self.busy_s += served * self.service_s
            self.in_flight = served / step_s * self.service_s  # Little's law
            await self.clock.advance(step_s)
            self.ready_log.append((self.t_s, self.num_ready))

    def ready_at(self, t_s: float) -> int:
        """Replicas ready at ``t_s`` (the last step at or before it)."""
        ready = [n for t, n in self.ready_log if t <= t_s + 1e-9]
        return ready[-1] if ready else self.num_ready
