"""Reading a running gateway's counters into per-interval samples, once per monitor tick.

What it does: ``GatewaySampler.sample`` reads, for each deployment and version lane, what the
gateway already keeps (``VersionLane.counts()``: cumulative requests, 5xx and the latency
histogram; ``load_snapshot()``: replicas and queue depth; the batch-size and model-time
Prometheus histograms, read once per tick through ``collect()``) and turns the difference with
the previous tick into a ``LaneSample``: requests, errors and latencies *of that interval*.
``DeploymentSample`` adds up a deployment's lanes. ``values`` gives the series the monitor
stores (``rps``, ``p50_ms``, ``p99_ms``, ``error_rate``, ``batch_size``, ``replicas``,
``queue_depth``; a percentile or batch size is left out when the interval had none).

What it must never do: touch the request path (it only reads counters the hot path keeps
anyway), block, or invent a value. A lane that was replaced (a fresh lane object, or counts
that went down) starts from zero rather than giving a negative interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiscale.rollout.histogram import Histogram

__all__ = ["DeploymentSample", "GatewaySampler", "LaneSample"]


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


def _sum_count(families: Iterable[Any]) -> dict[tuple[str, str], tuple[float, float]]:
    """``(deployment, version) -> (sum, count)`` of a labelled Prometheus histogram."""
    out: dict[tuple[str, str], list[float]] = {}
    for family in families:
        for s in family.samples:
            if s.name.endswith("_sum"):
                index = 0
            elif s.name.endswith("_count"):
                index = 1
            else:
                continue
            key = (s.labels.get("deployment", ""), s.labels.get("version", ""))
            out.setdefault(key, [0.0, 0.0])[index] = float(s.value)
    return {k: (v[0], v[1]) for k, v in out.items()}


@dataclass(frozen=True, slots=True)
class _LaneMemory:
    lane_id: int
    num_requests: int
    num_errors: int
    latency_s: Histogram


class GatewaySampler:
    """Remembers each lane's counters at the previous tick; one owner (the monitor loop)."""

    def __init__(self) -> None:
        self._memory: dict[tuple[str, str], _LaneMemory] = {}
        #: ``(sum, count)`` of the batch-size and model-time histograms per lane label: they
        #: outlive a lane object (same labels), so they are remembered apart from it.
        self._batch: dict[tuple[str, str], tuple[float, float]] = {}
        self._model: dict[tuple[str, str], tuple[float, float]] = {}

    def sample(self, gateway: Any, t_s: float, dt_s: float) -> list[DeploymentSample]:
        """Per deployment: its total (version ``"*"``) first, then one sample per version."""
        batch = _sum_count(gateway.metrics.batch_size.collect())
        model = _sum_count(gateway.metrics.model_seconds.collect())
        out: list[DeploymentSample] = []
        seen: set[tuple[str, str]] = set()
        for name, deployment in list(gateway.deployments.items()):
            lanes = [self._lane(name, version, lane, t_s, dt_s, batch, model)
                     for version, lane in list(deployment.lanes.items())]
            seen.update((name, s.version) for s in lanes)
            if not lanes:
                continue
            out.append(DeploymentSample.of(lanes, "*"))
            out.extend(DeploymentSample.of([s], s.version) for s in lanes)
        for key in [k for k in self._memory if k not in seen]:
            # a removed lane: forget it (bounded memory)
            del self._memory[key]
            self._batch.pop(key, None)
            self._model.pop(key, None)
        return out

    def _lane(self, name: str, version: str, lane: Any, t_s: float, dt_s: float,
              batch: Mapping[tuple[str, str], tuple[float, float]],
              model: Mapping[tuple[str, str], tuple[float, float]]) -> LaneSample:
        counts = lane.counts()
        ready, starting, _wanted, _inflight, queue_depth, _submitted = lane.load_snapshot()
        key = (name, version)
        now_batch = batch.get(key, (0.0, 0.0))
        now_model = model.get(key, (0.0, 0.0))
        old = self._memory.get(key)
        if old is None or old.lane_id != id(lane) or counts.num_requests < old.num_requests:
            old = _LaneMemory(id(lane), 0, 0, Histogram.empty(counts.latency_s.upper_bounds))
        old_batch = self._batch.get(key, (0.0, 0.0))
        old_model = self._model.get(key, (0.0, 0.0))
        if now_batch[1] < old_batch[1] or now_model[1] < old_model[1]:
            old_batch, old_model = (0.0, 0.0), (0.0, 0.0)  # the registry was reset
        latency = Histogram(
            counts.latency_s.upper_bounds,
            tuple(a - b for a, b in zip(counts.latency_s.counts, old.latency_s.counts,
                                        strict=True)),
            counts.latency_s.total - old.latency_s.total)
        sample = LaneSample(
            name, version, t_s, dt_s,
            counts.num_requests - old.num_requests, counts.num_errors - old.num_errors,
            latency, now_batch[0] - old_batch[0], now_batch[1] - old_batch[1],
            now_model[0] - old_model[0], ready, ready + starting, queue_depth,
            lane.spec.batching.max_queue, lane.spec.max_inflight_batches)
        self._memory[key] = _LaneMemory(id(lane), counts.num_requests, counts.num_errors,
                                        counts.latency_s)
        self._batch[key] = now_batch
        self._model[key] = now_model
        return sample
