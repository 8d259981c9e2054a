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
        self.llm = LlmMetrics(registry)


#: Time to first token: from the gateway receiving the request to the first output text.
_TTFT_BUCKETS_S = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
#: Inter-token latency: the gap between two chunks of output text.
_ITL_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
_E2E_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class LlmMetrics:
    """The LLM path's metrics, per deployment, version and engine replica.

    Latencies are measured at the gateway (what a client sees), after vLLM's names
    (``time_to_first_token``, ``inter_token_latency``, ``e2e_request_latency``); token counts
    come from each request's usage. The engine gauges are scraped from the engines' own
    ``/metrics`` (``aiscale.engines.metrics``), named after the Gateway API Inference
    Extension's model-server protocol (queued and running requests, KV-cache use)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("deployment", "version", "replica")
        self.ttft_seconds = Histogram(
            "aiscale_llm_time_to_first_token_seconds",
            "Time from a request's arrival at the gateway to its first output token.",
            labels,
            buckets=_TTFT_BUCKETS_S,
            registry=registry,
        )
        self.itl_seconds = Histogram(
            "aiscale_llm_inter_token_latency_seconds",
            "Time between two output tokens of one streamed request, as relayed.",
            labels,
            buckets=_ITL_BUCKETS_S,
            registry=registry,
        )
        self.e2e_seconds = Histogram(
            "aiscale_llm_e2e_request_latency_seconds",
            "Time from a request's arrival to its last output token (answered requests).",
            labels,
            buckets=_E2E_BUCKETS_S,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "aiscale_llm_prompt_tokens_total",
            "Prompt tokens of answered, cancelled and failed requests (cached ones included).",
            labels,
            registry=registry,
        )
        self.cached_prompt_tokens = Counter(
            "aiscale_llm_cached_prompt_tokens_total",
            "Prompt tokens the engine served from its prefix cache.",
            labels,
            registry=registry,
        )
        self.generation_tokens = Counter(
            "aiscale_llm_generation_tokens_total",
            "Output tokens generated (streamed before a cancel included).",
            labels,
            registry=registry,
        )
        self.requests = Counter(
            "aiscale_llm_requests_total",
            "LLM requests by outcome (ok, cancelled, failed) and whether they streamed.",
            ("deployment", "version", "outcome", "stream"),
            registry=registry,
        )
        self.engine_waiting = Gauge(
            "aiscale_llm_engine_requests_waiting",
            "Requests queued in the engine (model-server protocol TotalQueuedRequests).",
            labels,
            registry=registry,
        )
        self.engine_running = Gauge(
            "aiscale_llm_engine_requests_running",
            "Requests decoding in the engine (model-server protocol TotalRunningRequests).",
            labels,
            registry=registry,
        )
        self.engine_kv_cache_usage = Gauge(
            "aiscale_llm_engine_kv_cache_usage_ratio",
            "Share of the engine's KV cache in use, 0..1 (KVCacheUtilization), when it says.",
            labels,
            registry=registry,
        )
        self.engine_prefix_cache_hit_ratio = Gauge(
            "aiscale_llm_engine_prefix_cache_hit_ratio",
            "Prompt tokens served from the engine's prefix cache over those looked up, "
            "since the engine started, when it says.",
            labels,
            registry=registry,
        )
        self.gateway_inflight = Gauge(
            "aiscale_llm_gateway_requests_inflight",
            "Requests this gateway has sent to the engine replica and not had answered.",
            labels,
            registry=registry,
        )
        self.cold_start_seconds = Histogram(
            "aiscale_llm_cold_start_seconds",
            "Time a request was held at the gateway while an engine loaded (no engine of "
            "its version was ready: scaled to zero, or every engine being replaced).",
            ("deployment", "version"),
            buckets=_E2E_BUCKETS_S,
            registry=registry,
        )
        self.held_requests = Gauge(
            "aiscale_llm_held_requests",
            "Requests held at the gateway now, waiting for an engine to load.",
            ("deployment", "version"),
            registry=registry,
        )
