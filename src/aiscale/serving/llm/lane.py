"""One version of an LLM deployment: engine replicas behind the one ``ReplicaPool``, a router.

An ``LlmLane`` is a ``VersionLane`` whose replicas are engine processes (llama.cpp, vLLM) or
the endpoints of an OpenAI upstream, started, health-checked, drained, replaced after a crash
and placed on GPUs by the same pool as any replica. So the deployment's split, sticky users,
shadowing, rollouts, the autoscaler and the monitor see it as they see every version. What
differs: requests are not batched by the gateway (the engine batches continuously); the
gateway's LLM path (``api.py``) asks this lane for the engines it may use (``ready_engines``),
lets the lane's router choose one, and counts the request in flight on it while it runs.

A background task scrapes each engine's ``/metrics`` (queued and running requests, KV-cache
use, prefix-cache hits) for the router and the gauges. The lane never reads a request body.

For the control loops it keeps what the Fleet's ``LlmSignals`` carry (``llm_signals``): the
scraped queues and KV use, requests held while no engine is ready, and cumulative token
counts and TTFT/ITL histograms of ended requests; and, per answered request, the rollout
analysis's LLM metrics (time to first token, inter-token latency, output tokens). A request
that finds no engine ready is held until one has loaded (never refused while one starts),
and that cold start is reported: ``aiscale_llm_cold_start_seconds`` and one log line.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from aiscale.contracts.fleet import LlmSignals
from aiscale.contracts.histogram import Histogram, latency_histogram
from aiscale.engines.metrics import EngineMetrics, parse_engine_metrics
from aiscale.engines.spec import EngineSpec
from aiscale.errors import AiscaleError, ReplicaError, ReplicaUnavailable
from aiscale.gpus import GpuPool
from aiscale.llm.kv_store import KvStore
from aiscale.llm.ledger import TokenUsage
from aiscale.llm.routing import EngineView, Router, make_router
from aiscale.replicas.pool import Replica
from aiscale.rollout.analysis import (
    FEEDBACK_METRIC,
    ITL_METRIC,
    OUTPUT_TOKENS_METRIC,
    TTFT_METRIC,
)
from aiscale.serving.lane import (
    AutoscalerFactory,
    DeploymentSpec,
    HistogramRecorder,
    VersionLane,
)
from aiscale.serving.llm.engine_client import EngineClient
from aiscale.serving.llm.validation import EngineLimits, LlmRequest, engine_body
from aiscale.serving.metrics import GatewayMetrics
from aiscale.serving.specs import version_engine_fields

if TYPE_CHECKING:
    from aiscale.serving.tracing import RequestTracing

__all__ = ["LlmDeployment", "LlmLane", "ShadowCopy", "engine_backend"]

logger = logging.getLogger(__name__)

#: How often each engine's ``/metrics`` is scraped (seconds): the router adds this
#: gateway's own live in-flight counts, so the scrape only needs to see other gateways' load.
SCRAPE_INTERVAL_S = 1.0
#: How often a request waiting for a starting engine looks again (seconds).
ENGINE_WAIT_POLL_S = 0.05
#: Buckets of the output-token counts the rollout analysis compares: every count up to 20
#: in its own bucket, then 5 % apart up to 131,072 tokens.
OUTPUT_TOKENS_HISTOGRAM = Histogram.log_spaced(1.0, 131_072.0, 1.05)
#: Buckets of feedback scores: 0 to 10 in steps of 0.1 (1-5 stars, thumbs as 0/1); a score
#: outside lands in an end bucket (the rank test keeps its order, the mean is exact).
FEEDBACK_HISTOGRAM = Histogram.linear(0.0, 10.0, 101)
#: Answered requests a lane remembers, newest kept, so a feedback score given later reaches
#: the analysis of the version that answered (about 100 bytes each).
MAX_REMEMBERED_ANSWERS = 16_384
#: Backends by engine kind: module and class (imported when a lane of that kind is made).
_BACKENDS = {
    "llamacpp": ("aiscale.engines.llamacpp", "LlamaCppBackend"),
    "vllm": ("aiscale.engines.vllm", "VllmBackend"),
    "openai-upstream": ("aiscale.engines.upstream", "UpstreamBackend"),
}


@dataclass(frozen=True, slots=True)
class ShadowCopy:
    """A request mirrored to a shadow version (``Deployment.mirror``): sent whole, never
    streamed to anyone; only its output text is compared with the primary's."""

    request: LlmRequest
    max_tokens: int


def engine_backend(engine: EngineSpec, *, kv: KvStore | None = None) -> Any:
    """The ``ReplicaBackend`` that runs ``engine``'s replicas; with ``kv``, a llama.cpp
    engine's conversations are saved there when it drains (scale-down, rollout, stop)."""
    module, name = _BACKENDS[engine.kind]
    backend_class = getattr(importlib.import_module(module), name)
    if kv is not None:
        return backend_class(engine, on_drained=kv.save_engine)
    return backend_class(engine)


def kv_store_of(spec: DeploymentSpec, engine: EngineSpec) -> KvStore | None:
    """The node-local store of saved conversation prefixes for a llama.cpp deployment (slot
    save/restore in the engines' shared slot folder); ``None`` for other engine kinds."""
    if engine.kind != "llamacpp":
        return None
    from aiscale.engines.llamacpp import slot_save_dir_of

    return KvStore(slot_save_dir_of(engine), deployment=spec.name)


class LlmLane(VersionLane):
    """A running version of an LLM deployment: ``start`` before use, ``stop`` to drain it."""

    def __init__(
        self,
        spec: DeploymentSpec,
        metrics: GatewayMetrics,
        gpus: GpuPool | None = None,
        autoscalers: AutoscalerFactory | None = None,
        tracing: RequestTracing | None = None,
        *,
        client: EngineClient,
        redis_url: str | None = None,
        key_prefix: str = "aiscale:",
    ) -> None:
        engine = spec.engine
        if engine is None:
            raise ValueError(f"{spec.name} has no engine: it is not an LLM deployment")
        kv = kv_store_of(spec, engine)
        super().__init__(
            spec,
            metrics,
            gpus,
            None,  # no response cache: generations are sampled, not looked up
            autoscalers,
            tracing,
            backend=engine_backend(engine, kv=kv),
            replica_spec=engine.replica_spec(),
        )
        self.engine = engine
        #: Saved KV prefixes: filled when an engine drains, read before a request is sent.
        self.kv = kv
        self.limits = EngineLimits(
            context_window=engine.context_window,
            max_output_tokens=engine.max_output_tokens,
            can_count_tokens=engine.kind != "openai-upstream",
        )
        #: What this version's own engine settings add to every request body (a registered
        #: version's ``prompt_cache: false``: ``specs.version_engine_fields``).
        self.engine_fields = version_engine_fields(engine.kind, spec.model_config)
        self.router: Router = make_router(
            spec.routing.policy,
            deployment=spec.name,
            redis_url=redis_url,
            key_prefix=key_prefix,
            **spec.routing.knobs,
        )
        self.client = client
        self.llm_metrics = metrics.llm
        #: Requests this gateway has sent to each replica and not had answered.
        self._inflight: dict[int, int] = {}
        #: The last scrape of each replica's engine metrics.
        self._scraped: dict[int, EngineMetrics] = {}
        #: Engine URLs the router has been told about (to ``forget`` the gone ones).
        self._known_urls: dict[int, str] = {}
        self._num_arrived = 0
        #: Requests answered whole, and their seconds (the Fleet's completed items and
        #: busy time: an LLM request is one item, served in its own engine slot).
        self._num_completed = 0
        self._completed_s = 0.0
        self._scraper: asyncio.Task[None] | None = None
        #: Cumulative tokens and latencies of ended requests (``LlmSignals``).
        self._prompt_tokens = 0.0
        self._output_tokens = 0.0
        self._ttft = HistogramRecorder(latency_histogram())
        self._itl = HistogramRecorder(latency_histogram())
        #: Requests waiting for an engine to load now; cold starts so far, and since when
        #: the current one has held requests (``None``: none is going on).
        self._num_held = 0
        self._num_cold_starts = 0
        #: Request ids answered lately (insertion order: the oldest is forgotten first).
        self._answered_ids: OrderedDict[str, None] = OrderedDict()
        self._cold_since_s: float | None = None
        self._held_in_cold_start = 0

    # ----- what the Fleet and the admin API read --------------------------------------
    @property
    def is_ready(self) -> bool:
        """Some engine is serving, or the lane rests at zero on purpose (a request wakes it)."""
        is_resting = self.autoscaler is not None and self.pool.num_wanted == 0
        return self.pool.num_ready > 0 or is_resting

    @property
    def queue_depth(self) -> int:
        """Requests queued in the engines (their own queues, as last scraped)."""
        return sum(m.num_waiting for m in self._scraped.values())

    @property
    def num_arrived(self) -> int:
        return self._num_arrived

    @property
    def num_inflight(self) -> int:
        """Requests this gateway has in flight on the lane's engines."""
        return sum(self._inflight.values())

    def batch_totals(self) -> tuple[int, int, float]:
        """(requests, requests, their seconds) answered so far: the engine batches them
        itself, so each request counts as one batch of one item for the control loops."""
        return self._num_completed, self._num_completed, self._completed_s

    def completed(self, duration_s: float) -> None:
        """A request was answered whole in ``duration_s`` seconds."""
        self._num_completed += 1
        self._completed_s += duration_s

    def ended(
        self, outcome: str, usage: TokenUsage, ttft_s: float | None, itl_s: float | None
    ) -> None:
        """A request ended (``ok``, ``cancelled`` or ``failed``) with ``usage``: count its
        tokens and latencies for the control loops; an answered one also feeds the rollout
        analysis (TTFT, ITL, output tokens)."""
        self._prompt_tokens += usage.prompt_tokens
        self._output_tokens += usage.completion_tokens
        if ttft_s is not None:
            self._ttft.record(ttft_s)
        if itl_s is not None:
            self._itl.record(itl_s)
        if outcome != "ok":
            return
        if ttft_s is not None:
            self.observe_metric(TTFT_METRIC, ttft_s, latency_histogram())
        if itl_s is not None:
            self.observe_metric(ITL_METRIC, itl_s, latency_histogram())
        self.observe_metric(
            OUTPUT_TOKENS_METRIC, float(usage.completion_tokens), OUTPUT_TOKENS_HISTOGRAM
        )

    def answered(self, request_id: str) -> None:
        """``request_id`` was answered here: a feedback score for it counts for this
        version (``record_feedback``), while it is among the last ``MAX_REMEMBERED_ANSWERS``."""
        self._answered_ids[request_id] = None
        if len(self._answered_ids) > MAX_REMEMBERED_ANSWERS:
            self._answered_ids.popitem(last=False)

    def record_feedback(self, request_id: str, score: float) -> bool:
        """A user's score for a request this lane answered: one sample of the rollout
        analysis's feedback metric (the first score per request counts; later ones for the
        same request are captured but not counted again)."""
        if request_id not in self._answered_ids:
            return False
        del self._answered_ids[request_id]
        self.observe_metric(FEEDBACK_METRIC, score, FEEDBACK_HISTOGRAM)
        return True

    def llm_signals(self) -> LlmSignals:
        """The Fleet's token-level view of this version (``contracts.fleet.LlmSignals``):
        engine gauges as last scraped from the serving replicas (an upstream, which is not
        scraped, counts this gateway's requests in flight as running)."""
        serving = {r.replica_id for r in self.pool.replicas() if r.is_serving}
        scraped = [m for replica_id, m in self._scraped.items() if replica_id in serving]
        usages = [m.kv_cache_usage for m in scraped if m.kv_cache_usage is not None]
        running = sum(m.num_running for m in scraped)
        if self.engine.kind == "openai-upstream":
            running = self.num_inflight
        return LlmSignals(
            num_waiting=sum(m.num_waiting for m in scraped),
            num_running=running,
            num_held=self._num_held,
            kv_cache_usage=sum(usages) / len(usages) if usages else None,
            num_slots=self.engine.parallel * self.pool.num_ready,
            prompt_tokens=self._prompt_tokens,
            output_tokens=self._output_tokens,
            ttft_s=self._ttft.snapshot(),
            itl_s=self._itl.snapshot(),
            num_cold_starts=self._num_cold_starts,
        )

    def engine_metrics(self) -> dict[int, EngineMetrics]:
        """The last scrape of each engine replica, by replica id."""
        return dict(self._scraped)

    # ----- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Start the engines and wait until all are healthy; raises ``ModelLoadError``.
        At least one starts even when the spec asks for zero (as for every lane)."""
        await self.pool.start(max(1, self.spec.replicas))
        if self.autoscaler is not None:
            self.autoscaler.start()
        self._export_replicas()
        if self.engine.kind != "openai-upstream":
            self._scraper = asyncio.create_task(self._scrape_forever(), name="llm-scrape")

    async def stop(self, drain_timeout_s: float) -> None:
        """Let the requests in flight finish (up to the deadline), then stop the engines
        (each drains what it still holds) and the router."""
        if self.autoscaler is not None:
            await self.autoscaler.stop()
        deadline = time.monotonic() + drain_timeout_s
        while self.num_inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.pool.stop(drain_timeout_s=max(0.0, deadline - time.monotonic()))
        if self.kv is not None:
            await self.kv.aclose()
        if self._scraper is not None:
            self._scraper.cancel()
            await asyncio.gather(self._scraper, return_exceptions=True)
        await self.router.close()
        self._export_replicas()

    # ----- requests -------------------------------------------------------------------
    def ready_engines(self) -> list[EngineView]:
        """The engines a request may go to (the router skips draining or unready ones)."""
        views = []
        for replica in self.pool.replicas():
            if replica.is_dead:
                continue
            scraped = self._scraped.get(replica.replica_id)
            inflight = self._inflight.get(replica.replica_id, 0)
            views.append(
                EngineView(
                    url=replica.handle.url,
                    replica_id=replica.replica_id,
                    num_waiting=(scraped.num_waiting if scraped else 0) + inflight,
                    num_running=scraped.num_running if scraped else 0,
                    is_ready=True,
                    is_draining=replica.is_draining,
                )
            )
        return views

    def replica(self, replica_id: int) -> Replica[Any]:
        """The serving replica ``replica_id``; ``ReplicaUnavailable`` if it is gone."""
        for replica in self.pool.replicas():
            if replica.replica_id == replica_id and replica.is_serving:
                return replica
        raise ReplicaUnavailable(f"engine replica {replica_id} of {self.spec.name} is gone")

    async def wait_for_engine(self, timeout_s: float) -> None:
        """Return once an engine serves, or at ``timeout_s``: a lane resting at zero (or an
        engine being replaced) gets its request answered once one is up, not refused. Returns
        at once when nothing is starting or will start (the router then says 503).

        The request counts as held meanwhile (``LlmSignals.num_held``: the autoscaler sees it
        waiting); its wait is a cold start (``aiscale_llm_cold_start_seconds``), and the
        first request to see the engine up logs the cold start once for all it held."""
        if self.pool.num_ready > 0:
            return
        if self.pool.num_starting == 0 and self.autoscaler is None:
            return
        started_s = time.monotonic()
        deadline = started_s + timeout_s
        labels = (self.spec.name, self.spec.version)
        held = self.llm_metrics.held_requests.labels(*labels)
        if self._cold_since_s is None:
            self._cold_since_s = started_s
            self._held_in_cold_start = 0
        self._held_in_cold_start += 1
        self._num_held += 1
        held.inc()
        try:
            while self.pool.num_ready == 0 and time.monotonic() < deadline:
                if self.pool.num_starting == 0 and self.autoscaler is None:
                    return
                await asyncio.sleep(ENGINE_WAIT_POLL_S)
        finally:
            self._num_held -= 1
            held.dec()
        if self.pool.num_ready == 0:
            return  # timed out: the router says 503; the cold start goes on for others
        now_s = time.monotonic()
        self.llm_metrics.cold_start_seconds.labels(*labels).observe(now_s - started_s)
        if self._cold_since_s is not None:
            self._num_cold_starts += 1
            logger.info(
                "cold start of %s version %s: an engine was ready %.2f s after the first "
                "request arrived; %d request(s) held meanwhile, none refused",
                self.spec.name, self.spec.version, now_s - self._cold_since_s,
                self._held_in_cold_start,
            )
            self._cold_since_s = None

    def arrived(self) -> None:
        """Count a request that reached this lane (the Fleet's ``num_arrived``); wakes a lane
        resting at zero replicas."""
        self._num_arrived += 1
        if self.pool.num_ready == 0 and self.autoscaler is not None:
            self.autoscaler.wake()

    def begin(self, replica: Replica[Any]) -> None:
        """A request goes to ``replica``: count it there until ``end``."""
        replica_id = replica.replica_id
        self._inflight[replica_id] = self._inflight.get(replica_id, 0) + 1
        # The pool's load per replica (scale-down drains the least loaded first, and the
        # Fleet's in-flight count) is items in flight: an LLM request is one.
        replica.num_inflight_items += 1
        self.llm_metrics.gateway_inflight.labels(*self._labels(replica_id)).inc()

    def end(self, replica: Replica[Any]) -> None:
        """The request that ``begin`` counted has ended (answered, cancelled or failed)."""
        replica_id = replica.replica_id
        left = self._inflight.get(replica_id, 0) - 1
        if left > 0:
            self._inflight[replica_id] = left
        else:
            self._inflight.pop(replica_id, None)
        if not replica.is_dead and replica.num_inflight_items > 0:
            replica.num_inflight_items -= 1
        self.llm_metrics.gateway_inflight.labels(*self._labels(replica_id)).dec()

    async def infer(self, items: list[Any], timeout_s: float | None = None) -> list[Any]:
        """The output text for each ``ShadowCopy`` in ``items`` (non-streamed): the shadow
        path (``Deployment.mirror``) sends a primary request's copy here, never to a client.
        Raises ``ReplicaUnavailable`` or ``ReplicaError`` (the engine refused it)."""
        timeout = self.spec.timeout_s if timeout_s is None else timeout_s
        return [await self._infer_one(item, timeout) for item in items]

    async def _infer_one(self, item: ShadowCopy, timeout_s: float) -> str:
        checked = item.request
        view = await self.router.choose(self.ready_engines(), routing_text="", session=None)
        replica = self.replica(view.replica_id)
        body = engine_body(
            checked,
            engine_kind=self.engine.kind,
            model=replica.handle.model_name,
            max_tokens=item.max_tokens,
            is_stream=False,
            engine_fields=self.engine_fields,
        )
        endpoint = "/v1/chat/completions" if checked.kind == "chat" else "/v1/completions"
        self.begin(replica)
        try:
            status, content = await self.client.post_json(
                replica.handle, endpoint, body, timeout_s=timeout_s
            )
        finally:
            self.end(replica)
        if status != 200:
            raise ReplicaError("EngineError", f"engine answered {status}: {content[:200]!r}")
        answer = orjson.loads(content)
        choice = answer["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return str(text or "")

    # ----- engine metrics -------------------------------------------------------------
    def _labels(self, replica_id: int) -> tuple[str, str, str]:
        return self.spec.name, self.spec.version, str(replica_id)

    async def _scrape_forever(self) -> None:
        while True:
            await asyncio.sleep(SCRAPE_INTERVAL_S)
            try:
                await self._scrape_all()
            except Exception:  # a task boundary: log, keep the last scrape, try again
                logger.exception("scraping the engines of %s failed", self.spec.name)

    async def _scrape_all(self) -> None:
        replicas = [r for r in self.pool.replicas() if r.is_serving]
        results = await asyncio.gather(
            *(self.client.scrape_metrics(r.handle) for r in replicas), return_exceptions=True
        )
        metrics = self.llm_metrics
        for replica, result in zip(replicas, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, AiscaleError):
                    raise result
                continue  # a replica that cannot answer: the pool's watcher decides its fate
            try:
                scraped = parse_engine_metrics(result, self.engine.kind)
            except AiscaleError as exc:
                logger.warning("engine %s metrics unreadable: %s", replica.handle.url, exc)
                continue
            self._scraped[replica.replica_id] = scraped
            labels = self._labels(replica.replica_id)
            metrics.engine_waiting.labels(*labels).set(scraped.num_waiting)
            metrics.engine_running.labels(*labels).set(scraped.num_running)
            if scraped.kv_cache_usage is not None:
                metrics.engine_kv_cache_usage.labels(*labels).set(scraped.kv_cache_usage)
            hit_rate = scraped.prefix_cache_hit_rate
            if hit_rate is not None:
                metrics.engine_prefix_cache_hit_ratio.labels(*labels).set(hit_rate)

    def _export_replicas(self) -> None:
        """The pool's replicas changed: export counts, and forget engines that are gone."""
        super()._export_replicas()
        live = {r.replica_id: r.handle.url for r in self.pool.replicas() if not r.is_dead}
        for replica_id, url in list(self._known_urls.items()):
            if replica_id in live:
                continue
            del self._known_urls[replica_id]
            self._scraped.pop(replica_id, None)
            self.router.forget(url)
            labels = self._labels(replica_id)
            for gauge in (
                self.llm_metrics.engine_waiting,
                self.llm_metrics.engine_running,
                self.llm_metrics.engine_kv_cache_usage,
                self.llm_metrics.engine_prefix_cache_hit_ratio,
                self.llm_metrics.gateway_inflight,
            ):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
        self._known_urls.update(live)


#: The name the issue's interface gives an LLM deployment's serving unit (one version).
LlmDeployment = LlmLane
