"""One model version of a deployment as it runs in the gateway: replicas, batcher, cache, counts.

A deployment holds one lane per version it serves (``deployment.py``); the traffic split
decides which lane answers a request. Knows nothing of HTTP and does no storage I/O.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.metrics import Counter, Gauge
from prometheus_client.metrics import Histogram as PromHistogram

from aiscale.contracts.fleet import LlmSignals
from aiscale.contracts.histogram import Histogram, latency_histogram
from aiscale.data.quality_window import QualitySettings
from aiscale.engines.spec import EngineSpec
from aiscale.errors import InvalidInput
from aiscale.gpus import GpuDemand, GpuPool
from aiscale.model import Schema
from aiscale.replicas.backend import ReplicaBackend, ReplicaResources, ReplicaSpec
from aiscale.replicas.local import LocalProcessBackend
from aiscale.replicas.pool import ReplicaPool
from aiscale.replicas.ray_pool import RayActorBackend, RayPlacement
from aiscale.scaling.controller import VersionAutoscaler, make_scaling_policy
from aiscale.serving.batcher import Batcher, BatchingSettings, BatchObservation
from aiscale.serving.cache import ResponseCache, cache_key, decode_output, encode_output
from aiscale.serving.metrics import GatewayMetrics

if TYPE_CHECKING:
    from aiscale.serving.shared_state import RedisResponseCache
    from aiscale.serving.tracing import RequestTracing

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AutoscalingSettings:
    """Which scaling policy runs this lane's replica count, and how often it looks."""

    policy: str
    decision_interval_s: float = 5.0
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LlmRouting:
    """An LLM deployment's routing policy (``aiscale.llm.routing.POLICIES``) and its knobs."""

    policy: str = "least_loaded"
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """Everything needed to run one deployment of one model version."""

    name: str
    model: str
    version: str
    runtime: str
    uri: str
    model_config: dict[str, Any] = field(default_factory=dict)
    replicas: int = 1
    batching: BatchingSettings = BatchingSettings()
    timeout_s: float = 30.0
    #: 0 turns the response cache off.
    cache_max_bytes: int = 0
    num_threads: int | None = None
    max_inflight_batches: int = 1
    #: ``None``: the replica count changes only when someone scales it.
    autoscaling: AutoscalingSettings | None = None
    #: GPUs each replica asks of the gateway's GPU pool; ``None`` runs on CPUs only.
    gpu: GpuDemand | None = None
    #: ``None``: replicas are processes on this machine; else actors on a Ray cluster.
    placement: RayPlacement | None = None
    #: The rolling-window data-quality check of its traffic; ``None``: none.
    quality: QualitySettings | None = None
    #: An LLM deployment's engine (its replicas are engine processes and it serves
    #: ``/v1/chat/completions``, ``serving/llm/``); ``None``: a model runtime.
    engine: EngineSpec | None = None
    #: How an LLM deployment picks an engine replica per request (``aiscale.llm.routing``).
    routing: LlmRouting = LlmRouting()

    @property
    def num_gpus(self) -> float:
        """GPUs per replica (a fraction shares one device); a Ray pool passes it to actors."""
        return self.gpu.num_gpus if self.gpu is not None else 0.0


def _gpu_resources(spec: DeploymentSpec, gpus: GpuPool | None) -> ReplicaResources | None:
    """Each replica's devices come from the pool; a GPU deployment without a pool is refused."""
    if spec.gpu is None or spec.gpu.num_gpus <= 0:
        # A CPU lane's replicas see no device, so none uses memory the pool granted to a team.
        return gpus.for_cpu_lane() if gpus is not None else None
    if gpus is None:
        raise InvalidInput(
            f"{spec.name} asks for GPUs but this server has no GPU pool", field="gpus"
        )
    return gpus.for_lane(spec.name, spec.version, spec.gpu)


#: Builds the autoscaler of a lane: ``(spec, lane_id)``; the gateway's gives it the Fleet.
AutoscalerFactory = Callable[["DeploymentSpec", int], VersionAutoscaler]


class HistogramRecorder:
    """A mutable, O(log buckets) per-sample counterpart of the immutable rollout ``Histogram``.

    The hot path records here; ``snapshot()`` hands the analysis an immutable copy.
    """

    __slots__ = ("_bounds", "_counts", "_total")

    def __init__(self, template: Histogram) -> None:
        self._bounds = template.upper_bounds
        self._counts = list(template.counts)
        self._total = template.total

    def record(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._total += value

    def snapshot(self) -> Histogram:
        return Histogram(self._bounds, tuple(self._counts), self._total)


@dataclass(frozen=True, slots=True)
class LaneCounts:
    """Cumulative outcome counts of one lane at one moment; the rollout controller diffs two."""

    num_requests: int
    num_errors: int
    latency_s: Histogram
    metrics: dict[str, Histogram]


@dataclass(frozen=True, slots=True)
class LaneTimings:
    """Cumulative durations of one lane for the OIP v2 statistics extension (Triton's)."""

    #: Seconds spent on requests that were not answered 200 (4xx and 5xx).
    failed_s: float
    #: Items that left the batcher's queue in a batch, and the seconds they waited there.
    num_dequeued: int
    queue_s: float
    #: Wall-clock time of the last answered request (unix seconds); 0 when none yet.
    last_answer_unix_s: float


#: Lane ids: unique for the process's life (``id()`` of a freed lane can come back).
_LANE_IDS = itertools.count(1)


class VersionLane:
    """A running model version: ``start`` before use, ``stop`` to drain and end it."""

    def __init__(
        self,
        spec: DeploymentSpec,
        metrics: GatewayMetrics,
        gpus: GpuPool | None = None,
        shared_cache: RedisResponseCache | None = None,
        autoscalers: AutoscalerFactory | None = None,
        tracing: RequestTracing | None = None,
        *,
        backend: ReplicaBackend[Any] | None = None,
        replica_spec: ReplicaSpec | None = None,
    ) -> None:
        """``backend`` and ``replica_spec`` replace the model-runtime replicas by another
        kind (an LLM lane's engine processes, ``serving/llm/lane.py``); the pool, its GPU
        leases, scaling and replacement stay the same."""
        self.spec = spec
        #: Names this lane in ``FleetSnapshot.lane_id``: cumulative counts restart with it.
        self.lane_id = next(_LANE_IDS)
        self._metrics = metrics
        labels = (spec.name, spec.version)
        self._queue_seconds: PromHistogram = metrics.queue_seconds.labels(*labels)
        self._model_seconds: PromHistogram = metrics.model_seconds.labels(*labels)
        self._batch_size: PromHistogram = metrics.batch_size.labels(*labels)
        self._queue_depth: Gauge = metrics.queue_depth.labels(*labels)
        self._restarts: Counter = metrics.replica_restarts.labels(*labels)
        self._replica_start_seconds: PromHistogram = metrics.replica_start_seconds.labels(*labels)
        self._cache_hits: Counter = metrics.cache_lookups.labels(spec.name, "hit")
        self._cache_misses: Counter = metrics.cache_lookups.labels(spec.name, "miss")
        if replica_spec is None:
            replica_spec = ReplicaSpec(
                spec.runtime,
                spec.uri,
                dict(spec.model_config),
                max_inflight_batches=spec.max_inflight_batches,
                num_threads=spec.num_threads,
                tracing=tracing.export if tracing is not None else None,
            )
        if backend is not None:
            resources = _gpu_resources(spec, gpus)
        elif spec.placement is None:
            backend = LocalProcessBackend(replica_spec)
            resources = _gpu_resources(spec, gpus)
        else:
            # Ray assigns each actor its devices (``num_gpus`` in the placement), so the
            # gateway's local GPU pool is not asked.
            backend = RayActorBackend(replica_spec, spec.placement)
            resources = None
        self.pool: ReplicaPool[Any] = ReplicaPool(
            replica_spec,
            backend,
            on_change=self._export_replicas,
            on_started=self._replica_start_seconds.observe,
            resources=resources,
        )
        self.batcher = Batcher(
            self.pool,
            spec.batching,
            on_batch=self._observe_batch,
            on_cold_arrival=self._wake_up if spec.autoscaling is not None else None,
            tracing=tracing.for_lane(spec.name, spec.version) if tracing is not None else None,
        )
        #: Sees this lane only through the Fleet; the lane owns its task (start and stop).
        self.autoscaler = (
            autoscalers(spec, self.lane_id)
            if spec.autoscaling is not None and autoscalers is not None
            else None
        )
        if spec.autoscaling is not None and autoscalers is None:
            # No Fleet runs it here (a lane built outside a gateway); bad knobs still fail.
            make_scaling_policy(spec.autoscaling.policy, spec.autoscaling.knobs)
        #: With Redis configured, a cache-enabled lane uses the shared cache instead.
        self.shared_cache = shared_cache if spec.cache_max_bytes > 0 else None
        self.cache = (
            ResponseCache(spec.cache_max_bytes)
            if spec.cache_max_bytes > 0 and self.shared_cache is None
            else None
        )
        self._queue_depth.set_function(lambda: self.batcher.queue_depth)
        self.schema: Schema | None = None
        self._num_replaced_seen = 0
        self._num_requests = 0
        self._num_errors = 0
        self._latency = HistogramRecorder(latency_histogram())
        self._num_batches = 0
        self._num_batch_items = 0
        self._model_s_total = 0.0
        self._failed_s_total = 0.0
        self._num_dequeued = 0
        self._queue_s_total = 0.0
        self._last_answer_unix_s = 0.0
        #: Custom metric samples (e.g. shadow divergence), by metric name.
        self._custom_metrics: dict[str, HistogramRecorder] = {}

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def queue_depth(self) -> int:
        """Requests' items waiting in the gateway for a replica (the batcher's queue)."""
        return self.batcher.queue_depth

    @property
    def num_arrived(self) -> int:
        """Items that arrived since the lane started (cumulative; the Fleet's ``num_arrived``)."""
        return self.batcher.num_submitted

    def observe(self, status: int, latency_s: float) -> None:
        """Count one answered request: 5xx are errors (the client's 4xx are not the model's)."""
        self._num_requests += 1
        self._last_answer_unix_s = time.time()  # a recorded timestamp, not an interval
        if status >= 500:
            self._num_errors += 1
        if status == 200:
            self._latency.record(latency_s)
        else:
            self._failed_s_total += latency_s

    def observe_metric(self, name: str, value: float, template: Histogram | None = None) -> None:
        """Record a custom metric sample for the rollout analysis. ``template`` gives the
        metric's buckets the first time it is seen (default: [0, 2] in steps of 0.01, for
        example a cosine distance to the primary answer); a metric keeps its first buckets."""
        recorder = self._custom_metrics.get(name)
        if recorder is None:
            recorder = self._custom_metrics[name] = HistogramRecorder(
                template if template is not None else Histogram.linear(0.0, 2.0, 201)
            )
        recorder.record(value)

    def llm_signals(self) -> LlmSignals | None:
        """Token-level signals for the Fleet's snapshot; ``None``: not an LLM version."""
        return None

    def record_feedback(self, request_id: str, score: float) -> bool:
        """Count a user's feedback score for the rollout analysis if this lane answered
        ``request_id`` lately; True if it did. Only LLM lanes keep the ids (``serving/llm``)."""
        return False

    def batch_totals(self) -> tuple[int, int, float]:
        """(batches run, items in them, model seconds of the successful ones) so far."""
        return self._num_batches, self._num_batch_items, self._model_s_total

    def timings(self) -> LaneTimings:
        return LaneTimings(
            self._failed_s_total,
            self._num_dequeued,
            self._queue_s_total,
            self._last_answer_unix_s,
        )

    def counts(self) -> LaneCounts:
        return LaneCounts(
            self._num_requests,
            self._num_errors,
            self._latency.snapshot(),
            {name: recorder.snapshot() for name, recorder in self._custom_metrics.items()},
        )

    @property
    def is_ready(self) -> bool:
        """Loaded, and either serving or scaled to zero on purpose (a request wakes it)."""
        if self.schema is None:
            return False
        is_resting = self.autoscaler is not None and self.pool.num_wanted == 0
        return self.pool.num_ready > 0 or is_resting

    def _wake_up(self) -> None:
        if self.autoscaler is not None:
            self.autoscaler.wake()

    async def start(self) -> None:
        """Start the replicas and wait until all are loaded; raises ``ModelLoadError``.

        At least one replica starts even when the spec asks for zero: it reports the model's
        schema, and an autoscaler may then take the lane to zero once it is idle.
        """
        await self.pool.start(max(1, self.spec.replicas))
        self.schema = Schema.from_json(self.pool.schema) if self.pool.schema else None
        self.batcher.start()
        if self.autoscaler is not None:
            self.autoscaler.start()
        self._export_replicas()

    async def scale(self, num_replicas: int, drain_timeout_s: float = 30.0) -> None:
        await self.pool.scale(num_replicas, drain_timeout_s=drain_timeout_s)
        self._export_replicas()

    async def stop(self, drain_timeout_s: float) -> None:
        """Answer what is queued (up to the deadline), then stop the replicas."""
        if self.autoscaler is not None:
            await self.autoscaler.stop()
        await self.batcher.wait_empty(drain_timeout_s)
        await self.pool.stop(drain_timeout_s=drain_timeout_s)
        await self.batcher.stop()
        self._export_replicas()

    async def infer(self, items: list[Any], timeout_s: float | None = None) -> list[Any]:
        """One output per item, in order; items already validated against ``schema``."""
        timeout = self.spec.timeout_s if timeout_s is None else timeout_s
        if self.cache is None:
            if self.shared_cache is not None:
                return await self._infer_shared(items, timeout)
            # The request's items go to the batcher as one unit: one future, however many.
            return await self.batcher.submit_many(items, timeout)
        return await self._infer_cached(items, timeout)

    def _cache_keys(self, items: list[Any]) -> list[bytes]:
        return [
            cache_key(
                self.spec.name,
                self.spec.version,
                orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY),
            )
            for item in items
        ]

    async def _infer_shared(self, items: list[Any], timeout_s: float) -> list[Any]:
        """The Redis cache: one lookup for all items, writes in the background.

        What Redis returns has passed its seal (``shared_state.py``) and is decoded as data
        only (``cache.decode_output``): nothing read from the network is ever unpickled."""
        assert self.shared_cache is not None
        keys = self._cache_keys(items)
        found = await self.shared_cache.get_many(keys)
        results: list[Any] = [None] * len(items)
        missing: list[int] = []
        for index, value in enumerate(found):
            if value is None:
                missing.append(index)
                continue
            try:
                results[index] = decode_output(value)
            except ValueError:
                self.shared_cache.count_rejected("format")
                missing.append(index)
        if len(missing) < len(items):
            self._cache_hits.inc(len(items) - len(missing))
        if missing:
            self._cache_misses.inc(len(missing))
            outputs = await self.batcher.submit_many([items[i] for i in missing], timeout_s)
            for index, output in zip(missing, outputs, strict=True):
                results[index] = output
            encoded = [(keys[i], encode_output(results[i])) for i in missing]
            self.shared_cache.put_many(
                [(key, value) for key, value in encoded if value is not None],
                self.spec.cache_max_bytes,
            )
        return results

    async def _infer_cached(self, items: list[Any], timeout_s: float) -> list[Any]:
        assert self.cache is not None
        keys = self._cache_keys(items)
        results: list[Any] = [None] * len(items)
        missing: list[int] = []
        for index, key in enumerate(keys):
            cached = self.cache.get(key)
            if cached is not None:
                # The same data-only encoding as in Redis: no pickle anywhere in the cache.
                try:
                    results[index] = decode_output(cached)
                    self._cache_hits.inc()
                    continue
                except ValueError:  # only a bug of ours could put such bytes here
                    logger.error("undecodable value in the response cache of %s", self.spec.name)
            missing.append(index)
            self._cache_misses.inc()
        if missing:
            outputs = await self.batcher.submit_many([items[i] for i in missing], timeout_s)
            for index, output in zip(missing, outputs, strict=True):
                results[index] = output
                encoded = encode_output(output)
                if encoded is not None:  # outputs beyond plain data and numpy: not cached
                    self.cache.put(keys[index], encoded)
            self._metrics.cache_bytes.labels(self.spec.name).set(self.cache.size_bytes)
        return results

    def _observe_batch(self, observation: BatchObservation) -> None:
        # Plain counters for ``fleet_counts`` (the control loops' view); the Prometheus
        # histograms below are for scrapers and are never read back.
        self._num_batches += 1
        self._num_batch_items += observation.size
        self._num_dequeued += len(observation.queue_s)
        self._queue_s_total += sum(observation.queue_s)
        if observation.is_ok:
            self._model_s_total += observation.model_s
        self._batch_size.observe(observation.size)
        for waited in observation.queue_s:
            self._queue_seconds.observe(waited)
        if observation.is_ok:
            self._model_seconds.observe(observation.model_s)

    def _export_replicas(self) -> None:
        labels = (self.spec.name, self.spec.version)
        self._metrics.replicas.labels(*labels, "ready").set(self.pool.num_ready)
        self._metrics.replicas.labels(*labels, "starting").set(self.pool.num_starting)
        self._metrics.replicas.labels(*labels, "wanted").set(self.pool.num_wanted)
        if self.pool.num_replaced > self._num_replaced_seen:
            self._restarts.inc(self.pool.num_replaced - self._num_replaced_seen)
            self._num_replaced_seen = self.pool.num_replaced
