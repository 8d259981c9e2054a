"""The serving side as every control loop sees it: the ``Fleet`` protocol and its snapshots.

The autoscaler, the rollout controller and follower, and the monitor never hold the gateway:
they read frozen ``FleetSnapshot`` values (one per deployment and version, cumulative counts,
so an observer diffs two of its own) and change the fleet through four calls. ``Gateway``
implements it; a test or the simulator may implement it too.

Rules every implementation keeps:
* ``scale`` is the only way a replica count changes (autoscaler, monitor action, CLI, apply):
  it reserves GPUs, persists the wanted count and records the cause, which later snapshots
  show as ``last_scale``. Scaling a version that has no traffic share and is not the primary
  to zero removes it (drains its in-flight work first).
* ``set_split`` swaps the split atomically; with ``primary`` it also makes that version the
  one a restarted server serves.
* Nothing here blocks the event loop; the awaitables may take as long as replicas take to
  start or drain.

This module imports nothing of ours but other contracts, and nothing outside the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aiscale.contracts.histogram import Histogram
from aiscale.contracts.split import TrafficSplit

__all__ = ["Fleet", "FleetSnapshot", "LlmSignals", "ScaleRecord"]


@dataclass(frozen=True, slots=True)
class ScaleRecord:
    """The last change of a version's wanted replica count, and who asked for it."""

    #: Free text naming the asker first: ``autoscaler: ...``, ``monitor: ...``, ``admin``.
    cause: str
    #: When it was asked for, on the fleet's monotonic clock.
    at_s: float
    num_before: int
    num_after: int

    @property
    def source(self) -> str:
        """The asker (``autoscaler``, ``monitor``, ``admin``, ...): the cause up to its colon."""
        return self.cause.split(":", 1)[0].strip()


@dataclass(frozen=True, slots=True)
class LlmSignals:
    """What an LLM version's engines and the gateway say about its token load at one moment.

    Gauges are as of now: ``num_waiting`` and ``num_running`` requests in the engines' own
    queues and slots (their last scrape, summed over replicas), ``num_held`` requests the
    gateway holds because no engine is ready (a version at zero, or all being replaced).
    ``kv_cache_usage`` is the mean share of the KV cache in use over the engines that report
    it (0..1; ``None`` when none does: llama.cpp builds without the gauge), ``num_slots``
    the sequences the ready engines may decode at once in all (``parallel`` each), so that
    ``num_running / num_slots`` stands in for KV use where the engine does not say.
    Counts and histograms are cumulative since the lane started (an observer diffs two):
    prompt and output tokens of ended requests, time to first token of each request, and
    each request's mean inter-token latency, in seconds; requests that waited for an engine
    to load (cold starts).
    """

    num_waiting: int
    num_running: int
    num_held: int
    kv_cache_usage: float | None
    num_slots: int
    prompt_tokens: float
    output_tokens: float
    ttft_s: Histogram
    itl_s: Histogram
    num_cold_starts: int = 0


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """One version of one deployment at one moment. Counts are cumulative since ``lane_id``
    started: when a version's replicas are replaced by a fresh lane the id changes and the
    counts restart from zero."""

    deployment: str
    version: str
    lane_id: int
    #: The version a restarted server serves, and requests that name no version get.
    is_primary: bool
    #: Its percent of live traffic in the current split (0 for a warm canary or a shadow).
    traffic_percent: float
    #: A rollout of this deployment is running and this version takes part in it.
    is_in_rollout: bool
    #: The deployment refuses low-priority requests (the monitor's ``shed`` action).
    is_shedding: bool
    #: A scaling policy runs this version's replica count.
    is_autoscaled: bool
    num_ready: int
    num_starting: int
    num_wanted: int
    #: Items on replicas now, and waiting in the batcher's queue now.
    num_inflight_items: int
    num_queued_items: int
    max_queue: int
    max_batch_size: int
    max_inflight_batches: int
    #: Items submitted to this version so far (items answered: ``num_batch_items``).
    num_arrived: int
    #: Requests answered so far, of which 5xx (a client's 4xx is not the model's error).
    num_requests: int
    num_errors: int
    #: Latency of the successful requests so far.
    latency_s: Histogram
    #: Batches run so far, the items in them, and the model time of the successful ones.
    num_batches: int
    num_batch_items: int
    model_s: float
    #: Custom metric samples so far (for example ``shadow_divergence``), by metric name.
    custom_metrics: Mapping[str, Histogram] = field(default_factory=dict)
    last_scale: ScaleRecord | None = None
    #: The registered model the deployment serves (its versions are this model's).
    model: str = ""
    #: Token-level signals of an LLM version (engine replicas); ``None`` for other models.
    llm: LlmSignals | None = None

    @property
    def num_replicas(self) -> int:
        """Replicas that exist and are paid for: ready plus starting."""
        return self.num_ready + self.num_starting

    @property
    def mean_batch_service_s(self) -> float | None:
        """Model time of one batch on average so far (``None`` before the first batch)."""
        return self.model_s / self.num_batches if self.num_batches else None


class Fleet(Protocol):
    """What the control loops may see and change of the serving side."""

    def snapshot(self, deployment: str | None = None) -> tuple[FleetSnapshot, ...]:
        """Every version of ``deployment`` (all deployments when ``None``), primary first.
        An unknown deployment gives an empty tuple."""
        ...

    async def scale(
        self, deployment: str, num_replicas: int, *, version: str | None = None, cause: str
    ) -> None:
        """Set the wanted replicas of a version (``None``: the primary). Raises ``NotFound``,
        ``InvalidInput`` (negative), ``GpuUnavailable`` when GPUs cannot be had in time."""
        ...

    async def set_split(
        self, deployment: str, split: TrafficSplit, *, primary: str | None = None, cause: str
    ) -> None:
        """Swap the traffic split atomically; every version in it must be warm.
        ``primary`` also makes that version the primary (and persists it)."""
        ...

    def set_shedding(self, deployment: str, is_shedding: bool) -> None:
        """Refuse (or accept again) low-priority requests to ``deployment``."""
        ...

    async def warm(self, deployment: str, version: str) -> None:
        """Start a version's replicas (resolved in the registry) with no traffic share yet;
        returns when they are ready. A version already warm is left as it is."""
        ...
