"""The live autoscaler of one model version: a scaling policy applied on a real clock.

Every ``decision_interval_s`` (or at once when a request arrives at a lane scaled to zero)
it observes the lane — replicas, requests in flight and queued, arrival and completion rates
— asks the pure policy (``scaling/policies``) for a target, and scales the lane towards it in
a background task. It logs and counts each decision that changes something, with its reason.
The policy is the same object the simulator drives; only this loop owns time and I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from aiscale.scaling.policies import ScalingObservation, make_policy
from aiscale.serving.metrics import GatewayMetrics

logger = logging.getLogger(__name__)


class ScalableLane(Protocol):
    """What the autoscaler needs of a lane (a ``VersionLane``)."""

    @property
    def version(self) -> str: ...

    def load_snapshot(self) -> tuple[int, int, int, int, int, int]:
        """(ready, starting, wanted, in-flight items, queued items, submitted items so far)."""
        ...

    async def scale(self, num_replicas: int, drain_timeout_s: float = 30.0) -> None: ...


class LaneAutoscaler:
    """Owns one task; ``start`` after the lane's first replicas are up, ``stop`` before it stops."""

    def __init__(
        self,
        lane: ScalableLane,
        deployment: str,
        policy_name: str,
        knobs: dict[str, Any],
        interval_s: float,
        metrics: GatewayMetrics,
    ) -> None:
        self.lane = lane
        self.deployment = deployment
        self.policy = make_policy(policy_name, **knobs)
        self.interval_s = interval_s
        self._metrics = metrics
        self._state: Any = self.policy.initial_state()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._scaling: asyncio.Task[None] | None = None
        self._last_submitted = 0
        self._last_s = time.monotonic()

    def start(self) -> None:
        self._last_s = time.monotonic()
        self._last_submitted = self.lane.load_snapshot()[5]
        self._task = asyncio.create_task(self._run(), name=f"autoscaler-{self.deployment}")

    async def stop(self) -> None:
        for task in (self._task, self._scaling):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._task, self._scaling) if t is not None), return_exceptions=True
        )

    def wake(self) -> None:
        """A request reached a lane with no replica: decide now, not at the next tick."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass
            try:
                self._step()
            except Exception:  # a task boundary: keep the fleet as it is, and say why
                logger.exception("autoscaler of %s failed to decide", self.deployment)

    def _step(self) -> None:
        now = time.monotonic()
        ready, starting, wanted, in_flight, queued, submitted = self.lane.load_snapshot()
        elapsed = max(now - self._last_s, 1e-3)
        arrival_rate = (submitted - self._last_submitted) / elapsed
        self._last_s, self._last_submitted = now, submitted
        observation = ScalingObservation(
            now_s=now,
            num_replicas=wanted,
            num_ready=ready,
            num_starting=starting,
            num_in_flight=in_flight,
            num_queued=queued,
            arrival_rate_per_s=arrival_rate,
            completed_rate_per_s=arrival_rate,
        )
        decision, self._state = self.policy.decide(observation, self._state)
        target = decision.target_replicas
        labels = (self.deployment, self.lane.version)
        self._metrics.autoscaler_target.labels(*labels).set(target)
        if target == wanted or (self._scaling is not None and not self._scaling.done()):
            return
        direction = "up" if target > wanted else "down"
        self._metrics.autoscaler_decisions.labels(*labels, direction).inc()
        logger.info(
            "autoscaler %s version %s: %d -> %d replicas (%s)",
            self.deployment,
            self.lane.version,
            wanted,
            target,
            decision.reason,
        )
        self._scaling = asyncio.create_task(self.lane.scale(target), name="autoscale")
