"""Prometheus metrics of the gateway, registered on an injected ``CollectorRegistry``.

Names follow ``aiscale_<part>_<thing>_<unit>``. Nothing here does I/O: ``/metrics`` renders
the registry on request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256, 512)


class GatewayMetrics:
    """Every metric the gateway exports, created once per app on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        labels = ("deployment", "version")
        self.requests = Counter(
            "aiscale_gateway_requests_total",
            "Inference requests by deployment, version and HTTP status.",
            ("deployment", "version", "status"),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "aiscale_gateway_request_seconds",
            "Total time of inference requests inside the gateway.",
            labels,
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "aiscale_batcher_queue_seconds",
            "Time items waited in the batching queue before their batch was sent.",
            labels,
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.model_seconds = Histogram(
            "aiscale_replica_model_seconds",
            "Time a replica spent in predict() per batch.",
            labels,
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_size = Histogram(
            "aiscale_batcher_batch_size",
            "Items per batch sent to a replica.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "aiscale_batcher_queue_depth",
            "Items waiting in the batching queue.",
            labels,
            registry=registry,
        )
        self.replicas = Gauge(
            "aiscale_replicas",
            "Replicas by state (ready, starting, wanted).",
            ("deployment", "version", "state"),
            registry=registry,
        )
        self.replica_restarts = Counter(
            "aiscale_replica_restarts_total",
            "Replicas replaced after they died.",
            labels,
            registry=registry,
        )
        self.cache_lookups = Counter(
            "aiscale_cache_lookups_total",
            "Response cache lookups by result (hit, miss).",
            ("deployment", "result"),
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "aiscale_cache_size_bytes",
            "Bytes held by the response cache.",
            ("deployment",),
            registry=registry,
        )
        self.autoscaler_target = Gauge(
            "aiscale_autoscaler_target_replicas",
            "Replicas the autoscaling policy asks for.",
            labels,
            registry=registry,
        )
        self.autoscaler_decisions = Counter(
            "aiscale_autoscaler_decisions_total",
            "Autoscaler decisions that changed the fleet.",
            ("deployment", "version", "direction"),
            registry=registry,
        )
        self.replica_start_seconds = Histogram(
            "aiscale_replica_start_seconds",
            "Time from starting a replica process to ready.",
            labels,
            buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 60, 120),
            registry=registry,
        )
        self.shadow_skipped = Counter(
            "aiscale_shadow_skipped_total",
            "Requests not mirrored because the shadow version already had its limit in flight.",
            ("deployment",),
            registry=registry,
        )
        self.rejections = Counter(
            "aiscale_gateway_rejections_total",
            "Requests refused before inference, by reason (auth, rate_limit, queue_full, invalid).",
            ("reason",),
            registry=registry,
        )
        # No model label: the names come from callers, so a label would be unbounded.
        self.unknown_model_requests = Counter(
            "aiscale_gateway_unknown_model_requests_total",
            "Requests naming a model no deployment serves (answered 404).",
            registry=registry,
        )
