"""Reading the fleet's counters into per-interval samples, once per monitor tick.

What it does: ``FleetSampler.sample`` reads one ``FleetSnapshot`` per deployment and version
(``Fleet.snapshot``: cumulative requests, 5xx, the latency histogram, batches and the items
and model time in them, replicas and queue depth) and turns the difference with the previous
tick into a ``LaneSample``: requests, errors, latencies and batches *of that interval*.
``DeploymentSample`` adds up a deployment's versions. ``values`` gives the series the monitor
stores (``rps``, ``p50_ms``, ``p99_ms``, ``error_rate``, ``batch_size``, ``replicas``,
``queue_depth``; a percentile or batch size is left out when the interval had none).

What it must never do: touch the request path (a snapshot only reads counters the hot path
keeps anyway), block, or invent a value. A version whose lane was replaced (another
``lane_id``, or counts that went down) starts from zero rather than giving a negative interval.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiscale.contracts.fleet import Fleet, FleetSnapshot
from aiscale.contracts.histogram import Histogram

__all__ = ["DeploymentSample", "FleetSampler", "LaneSample"]


@dataclass(frozen=True, slots=True)
class LaneSample:
    """One version lane over one interval of ``dt_s`` seconds ending at ``t_s`` (unix s)."""

    deployment: str
    version: str
    t_s: float
    dt_s: float
    num_requests: int
    num_errors: int
    #: Latencies (s) of the interval's successful requests.
    latency_s: Histogram
    batch_items: float
    num_batches: float
    model_s: float
    replicas_ready: int
    replicas_live: int
    queue_depth: int
    max_queue: int
    max_inflight_batches: int


@dataclass(frozen=True, slots=True)
class DeploymentSample:
    """A deployment's lanes added up (``version == "*"``), or one lane (its version)."""

    deployment: str
    version: str
    t_s: float
    dt_s: float
    num_requests: int
    num_errors: int
    latency_s: Histogram
    batch_items: float
    num_batches: float
    model_s: float
    replicas_ready: int
    replicas_live: int
    queue_depth: int
    max_queue: int
    #: Items per second the ready replicas serve when busy, from this interval's batches
    #: (``None`` when no batch ran).
    capacity_per_s: float | None

    def values(self) -> dict[str, float]:
        """The stored series of this interval; percentiles and batch size only when seen."""
        out = {
            "rps": self.num_requests / self.dt_s,
            "error_rate": self.num_errors / self.num_requests if self.num_requests else 0.0,
            "replicas": float(self.replicas_ready),
            "queue_depth": float(self.queue_depth),
        }
        if self.latency_s.num_samples:
            out["p50_ms"] = self.latency_s.quantile(0.5) * 1000.0
            out["p99_ms"] = self.latency_s.quantile(0.99) * 1000.0
        if self.num_batches > 0:
            out["batch_size"] = self.batch_items / self.num_batches
        return out

    @classmethod
    def of(cls, lanes: list[LaneSample], version: str) -> DeploymentSample:
        first = lanes[0]
        latency = first.latency_s
        for lane in lanes[1:]:
            latency = latency.merge(lane.latency_s)
        capacity = 0.0
        has_capacity = False
        for lane in lanes:
            if lane.model_s > 0 and lane.num_batches > 0:
                has_capacity = True
                per_replica = lane.batch_items / lane.model_s * lane.max_inflight_batches
                capacity += per_replica * lane.replicas_ready
        return cls(
            first.deployment, version, first.t_s, first.dt_s,
            sum(s.num_requests for s in lanes), sum(s.num_errors for s in lanes), latency,
            sum(s.batch_items for s in lanes), sum(s.num_batches for s in lanes),
            sum(s.model_s for s in lanes), sum(s.replicas_ready for s in lanes),
            sum(s.replicas_live for s in lanes), sum(s.queue_depth for s in lanes),
            sum(s.max_queue for s in lanes), capacity if has_capacity else None)


class FleetSampler:
    """Remembers each version's snapshot at the previous tick; one owner (the monitor loop)."""

    def __init__(self) -> None:
        self._memory: dict[tuple[str, str], FleetSnapshot] = {}

    def sample(self, fleet: Fleet, t_s: float, dt_s: float) -> list[DeploymentSample]:
        """Per deployment: its total (version ``"*"``) first, then one sample per version."""
        by_deployment: dict[str, list[LaneSample]] = {}
        seen: set[tuple[str, str]] = set()
        for snapshot in fleet.snapshot():
            key = (snapshot.deployment, snapshot.version)
            seen.add(key)
            by_deployment.setdefault(snapshot.deployment, []).append(
                self._lane(snapshot, self._memory.get(key), t_s, dt_s)
            )
            self._memory[key] = snapshot
        for key in [k for k in self._memory if k not in seen]:
            del self._memory[key]  # a removed version: forget it (bounded memory)
        out: list[DeploymentSample] = []
        for lanes in by_deployment.values():
            out.append(DeploymentSample.of(lanes, "*"))
            out.extend(DeploymentSample.of([s], s.version) for s in lanes)
        return out

    @staticmethod
    def _lane(
        now: FleetSnapshot, old: FleetSnapshot | None, t_s: float, dt_s: float
    ) -> LaneSample:
        if old is not None and (
            old.lane_id != now.lane_id
            or now.num_requests < old.num_requests
            or now.num_batches < old.num_batches
        ):
            old = None  # a fresh lane: its counts restarted from zero
        latency = now.latency_s
        if old is not None:
            latency = Histogram(
                latency.upper_bounds,
                tuple(a - b for a, b in zip(latency.counts, old.latency_s.counts, strict=True)),
                latency.total - old.latency_s.total,
            )
        return LaneSample(
            now.deployment,
            now.version,
            t_s,
            dt_s,
            now.num_requests - (old.num_requests if old else 0),
            now.num_errors - (old.num_errors if old else 0),
            latency,
            float(now.num_batch_items - (old.num_batch_items if old else 0)),
            float(now.num_batches - (old.num_batches if old else 0)),
            now.model_s - (old.model_s if old else 0.0),
            now.num_ready,
            now.num_ready + now.num_starting,
            now.num_queued_items,
            now.max_queue,
            now.max_inflight_batches,
        )
