"""Prometheus metrics of the GPU pool, on an injected registry (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: From a few seconds (a loaded model) to many minutes (waiting for another team to scale down).
_SERVING_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


class GpuMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.request_to_serving_seconds = Histogram(
            "aiscale_gpus_request_to_serving_seconds",
            "Time from a replica's GPU request to that replica serving, waiting included.",
            ["team"],
            buckets=_SERVING_BUCKETS_S,
            registry=registry,
        )
        self.wait_seconds = Histogram(
            "aiscale_gpus_wait_seconds",
            "Time a GPU request waited for capacity before it was granted.",
            ["team"],
            buckets=(0.0, 0.1, 1, 5, 10, 30, 60, 300, 900, 3600),
            registry=registry,
        )
        self.refusals = Counter(
            "aiscale_gpus_refusals_total",
            "GPU requests refused, by team and reason (quota, capacity, team, timeout).",
            ["team", "reason"],
            registry=registry,
        )
        self.waiting = Gauge(
            "aiscale_gpus_waiting_requests",
            "GPU requests waiting for capacity.",
            registry=registry,
        )
        self.team_gpus = Gauge(
            "aiscale_gpus_team_gpus",
            "GPUs a team holds (shares counted as fractions).",
            ["team"],
            registry=registry,
        )
        self.team_memory_bytes = Gauge(
            "aiscale_gpus_team_memory_bytes",
            "GPU memory a team holds (whole devices count all their memory).",
            ["team"],
            registry=registry,
        )
