"""A small real ``Fleet`` for tests of the control loops where the gateway is not the subject.

``MemoryFleet`` keeps per deployment and version the cumulative counts a ``FleetSnapshot``
carries; a test adds traffic with ``serve`` and reads back every change the loops made
(``scales``, ``splits``, shedding) with its cause. It keeps the rules of ``contracts/fleet.py``:
a version with no traffic share that is not the primary is removed when scaled to zero, a
split may only name warm versions, and each lane restarts its counts from zero.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

from aiscale.contracts.clock import Clock
from aiscale.contracts.fleet import FleetSnapshot, ScaleRecord
from aiscale.contracts.histogram import Histogram, latency_histogram
from aiscale.contracts.split import TrafficSplit
from aiscale.errors import InvalidInput, NotFound

_LANE_IDS = itertools.count(1)


@dataclass
class _Lane:
    num_wanted: int
    lane_id: int = field(default_factory=lambda: next(_LANE_IDS))
    num_requests: int = 0
    num_errors: int = 0
    latency_counts: list[int] = field(
        default_factory=lambda: [0] * (len(latency_histogram().upper_bounds) + 1)
    )
    latency_total_s: float = 0.0
    num_batches: int = 0
    model_s: float = 0.0
    last_scale: ScaleRecord | None = None


@dataclass
class _Deployment:
    model: str
    primary: str
    split: TrafficSplit
    lanes: dict[str, _Lane]
    is_shedding: bool = False


@dataclass(frozen=True, slots=True)
class ScaleCall:
    deployment: str
    version: str
    num_replicas: int
    cause: str


class MemoryFleet:
    """Deployments in memory; ``scale``, ``warm`` and splits take effect at once."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._deployments: dict[str, _Deployment] = {}
        self.scales: list[ScaleCall] = []
        self.splits: list[tuple[str, TrafficSplit, str]] = []
        self._num_unknown_model_requests = 0

    # ----- what a test does -------------------------------------------------------------
    def deploy(self, name: str, version: str, *, model: str = "m", num_replicas: int = 1) -> None:
        split = TrafficSplit.of({version: 100.0})
        self._deployments[name] = _Deployment(model, version, split, {version: _Lane(num_replicas)})

    def serve(
        self,
        deployment: str,
        version: str,
        num_requests: int,
        *,
        num_errors: int = 0,
        latency_s: float = 0.02,
    ) -> None:
        """Count ``num_requests`` answered requests (one batch each) of one version."""
        lane = self._lane(deployment, version)
        lane.num_requests += num_requests
        lane.num_errors += num_errors
        num_ok = num_requests - num_errors
        bounds = latency_histogram().upper_bounds
        lane.latency_counts[bisect.bisect_left(bounds, latency_s)] += num_ok
        lane.latency_total_s += latency_s * num_ok
        lane.num_batches += num_requests
        lane.model_s += latency_s * num_ok

    def name_unknown_model(self, num_requests: int = 1) -> None:
        """Count requests naming a model no deployment serves (a gateway answers them 404)."""
        self._num_unknown_model_requests += num_requests

    def num_unknown_model_requests(self) -> int:
        """The ``UnknownModelCount`` a ``LiveMonitor`` reads, as ``Gateway`` gives it."""
        return self._num_unknown_model_requests

    def primary_of(self, deployment: str) -> str:
        return self._deployments[deployment].primary

    def split_of(self, deployment: str) -> TrafficSplit:
        return self._deployments[deployment].split

    # ----- the Fleet ----------------------------------------------------------------------
    def snapshot(self, deployment: str | None = None) -> tuple[FleetSnapshot, ...]:
        names = list(self._deployments) if deployment is None else [deployment]
        out: list[FleetSnapshot] = []
        for name in names:
            found = self._deployments.get(name)
            if found is None:
                continue
            weights = dict(found.split.weights)
            is_shared = len(weights) > 1 or found.split.shadow_version is not None
            for version in sorted(found.lanes, key=lambda v: v != found.primary):
                lane = found.lanes[version]
                share = weights.get(version, 0.0)
                out.append(
                    FleetSnapshot(
                        deployment=name,
                        version=version,
                        lane_id=lane.lane_id,
                        is_primary=version == found.primary,
                        traffic_percent=share,
                        is_in_rollout=is_shared and share > 0,
                        is_shedding=found.is_shedding,
                        is_autoscaled=False,
                        num_ready=lane.num_wanted,
                        num_starting=0,
                        num_wanted=lane.num_wanted,
                        num_inflight_items=0,
                        num_queued_items=0,
                        max_queue=100,
                        max_batch_size=1,
                        max_inflight_batches=1,
                        num_arrived=lane.num_requests,
                        num_requests=lane.num_requests,
                        num_errors=lane.num_errors,
                        latency_s=Histogram(
                            latency_histogram().upper_bounds,
                            tuple(lane.latency_counts),
                            lane.latency_total_s,
                        ),
                        num_batches=lane.num_batches,
                        num_batch_items=lane.num_batches,
                        model_s=lane.model_s,
                        last_scale=lane.last_scale,
                        model=found.model,
                    )
                )
        return tuple(out)

    async def scale(
        self, deployment: str, num_replicas: int, *, version: str | None = None, cause: str
    ) -> None:
        if num_replicas < 0:
            raise InvalidInput("replicas must be >= 0", field="replicas")
        found = self._find(deployment)
        name = version or found.primary
        lane = self._lane(deployment, name)
        self.scales.append(ScaleCall(deployment, name, num_replicas, cause))
        has_share = name in found.split.versions or name == found.split.shadow_version
        if num_replicas == 0 and name != found.primary and not has_share:
            del found.lanes[name]
            return
        lane.last_scale = ScaleRecord(cause, self.clock.monotonic(), lane.num_wanted, num_replicas)
        lane.num_wanted = num_replicas

    async def set_split(
        self, deployment: str, split: TrafficSplit, *, primary: str | None = None, cause: str
    ) -> None:
        found = self._find(deployment)
        shadow = [split.shadow_version] if split.shadow_version else []
        for version in (*split.versions, *shadow):
            if version not in found.lanes:
                raise InvalidInput(f"version {version!r} is not warm", field="weights")
        found.split = split
        if primary is not None:
            self._lane(deployment, primary)
            found.primary = primary
        self.splits.append((deployment, split, cause))

    def set_shedding(self, deployment: str, is_shedding: bool) -> None:
        found = self._deployments.get(deployment)
        if found is not None:
            found.is_shedding = is_shedding

    async def warm(self, deployment: str, version: str) -> None:
        found = self._find(deployment)
        found.lanes.setdefault(version, _Lane(1))

    def _find(self, deployment: str) -> _Deployment:
        found = self._deployments.get(deployment)
        if found is None:
            raise NotFound(f"no deployment named {deployment!r}", field="model")
        return found

    def _lane(self, deployment: str, version: str) -> _Lane:
        lane = self._find(deployment).lanes.get(version)
        if lane is None:
            raise NotFound(f"version {version!r} of {deployment!r} is not deployed")
        return lane
