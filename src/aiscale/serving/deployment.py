"""A deployment: the model versions (lanes) it serves and the traffic split between them.

The split is an immutable ``TrafficSplit`` swapped in one assignment, so a change takes effect
atomically between two requests. Routing is sticky by user key (``contracts/split.py``), a
header can force a version or alias, and a share of traffic can be mirrored to a shadow
version whose answers are compared and counted but never returned. Shadow work runs in
tasks this object owns and never delays or fails the primary answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from aiscale.contracts.split import TrafficSplit, choose_version, should_shadow
from aiscale.errors import AiscaleError, Conflict, InvalidInput, NotFound
from aiscale.gpus import GpuPool
from aiscale.model import Schema
from aiscale.serving.errors import status_for
from aiscale.serving.lane import AutoscalerFactory, DeploymentSpec, VersionLane
from aiscale.serving.metrics import GatewayMetrics

if TYPE_CHECKING:
    from aiscale.serving.llm.context import LlmContext
    from aiscale.serving.shared_state import RedisResponseCache
    from aiscale.serving.tracing import RequestTracing

logger = logging.getLogger(__name__)

#: Shadow requests in flight per deployment; past this, mirroring is skipped (and counted).
MAX_SHADOW_INFLIGHT = 64
DIVERGENCE_METRIC = "shadow_divergence"


def divergence(primary: Any, shadow: Any) -> float:
    """How far two answers to the same input are apart, in [0, 2].

    Vectors: cosine distance. Anything else: 0 when equal, 1 when not.
    """
    left = np.asarray(primary)
    right = np.asarray(shadow)
    if (
        left.dtype.kind == "f"
        and right.dtype.kind == "f"
        and left.shape == right.shape
        and left.ndim == 1
    ):
        norms = float(np.linalg.norm(left) * np.linalg.norm(right))
        if norms == 0.0:
            return 0.0 if np.array_equal(left, right) else 1.0
        return float(np.clip(1.0 - float(np.dot(left, right)) / norms, 0.0, 2.0))
    return 0.0 if np.array_equal(left, right) else 1.0


class Deployment:
    """A named deployment; starts with one lane (``spec``) taking all traffic."""

    def __init__(
        self,
        spec: DeploymentSpec,
        metrics: GatewayMetrics,
        gpus: GpuPool | None = None,
        shared_cache: RedisResponseCache | None = None,
        autoscalers: AutoscalerFactory | None = None,
        tracing: RequestTracing | None = None,
        llm: LlmContext | None = None,
    ) -> None:
        self.name = spec.name
        self._metrics = metrics
        #: What LLM lanes share across the gateway (engine connections, Redis); ``None``:
        #: made on first use, with no Redis.
        self._llm = llm
        #: Where the lanes' replicas get GPUs (the gateway's pool).
        self._gpus = gpus
        #: The Redis response cache every lane uses when its cache is on (``None``: in process).
        self._shared_cache = shared_cache
        #: Builds each autoscaled lane's autoscaler (the gateway's, over its Fleet).
        self._autoscalers = autoscalers
        #: Spans of every lane's batches (``None``: tracing off).
        self._tracing = tracing
        self.lanes: dict[str, VersionLane] = {spec.version: self._new_lane(spec)}
        self.primary_version = spec.version
        self.split = TrafficSplit.of({spec.version: 100.0})
        #: Alias name → version, for the ``x-aiscale-version`` header.
        self.aliases: dict[str, str] = {}
        # An instance of our own, seeded from the OS: never the global random state.
        self._rng = random.Random(os.urandom(16))
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    def _new_lane(self, spec: DeploymentSpec) -> VersionLane:
        """A model version's lane, or an LLM version's (engine replicas) when it has an engine."""
        if spec.engine is None:
            return VersionLane(
                spec, self._metrics, self._gpus, self._shared_cache, self._autoscalers,
                self._tracing,
            )
        from aiscale.serving.llm.context import LlmContext
        from aiscale.serving.llm.lane import LlmLane

        if self._llm is None:
            self._llm = LlmContext()
        return LlmLane(
            spec,
            self._metrics,
            self._gpus,
            self._autoscalers,
            self._tracing,
            client=self._llm.client,
            redis_url=self._llm.redis_url,
            key_prefix=self._llm.key_prefix,
        )

    # ----- the primary lane, for callers that see one version ---------------------------------
    @property
    def primary(self) -> VersionLane:
        return self.lanes[self.primary_version]

    @property
    def spec(self) -> DeploymentSpec:
        return self.primary.spec

    @property
    def schema(self) -> Schema | None:
        return self.primary.schema

    @property
    def is_ready(self) -> bool:
        return all(self.lanes[v].is_ready for v, w in self.split.weights if w > 0)

    async def start(self) -> None:
        await self.primary.start()

    async def stop(self, drain_timeout_s: float) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        await asyncio.gather(*self._shadow_tasks, return_exceptions=True)
        await asyncio.gather(*(lane.stop(drain_timeout_s) for lane in self.lanes.values()))

    # ----- lanes and split --------------------------------------------------------------------
    def lane(self, version: str) -> VersionLane:
        found = self.lanes.get(version) or self.lanes.get(self.aliases.get(version, ""))
        if found is None:
            raise NotFound(
                f"version {version!r} of {self.name!r} is not deployed "
                f"(serving {sorted(self.lanes)})",
                field="version",
            )
        return found

    async def add_lane(self, spec: DeploymentSpec) -> VersionLane:
        """Start a version's replicas; it takes traffic only once a split gives it a share."""
        if spec.version in self.lanes:
            raise Conflict(
                f"version {spec.version!r} is already deployed in {self.name!r}", field="version"
            )
        lane = self._new_lane(spec)
        try:
            await lane.start()
        except BaseException:
            # E.g. one replica refused a GPU: the others must not keep processes or devices.
            await lane.stop(0.0)
            raise
        self.lanes[spec.version] = lane
        return lane

    async def remove_lane(self, version: str, drain_timeout_s: float) -> None:
        """Drain and stop a version that no longer has a share of traffic."""
        if (
            any(v == version and w > 0 for v, w in self.split.weights)
            or version == self.split.shadow_version
        ):
            raise Conflict(
                f"version {version!r} still has traffic in {self.name!r}", field="version"
            )
        if version == self.primary_version:
            raise Conflict("cannot remove the primary version", field="version")
        lane = self.lanes.pop(version)
        await lane.stop(drain_timeout_s)

    def set_split(self, split: TrafficSplit) -> None:
        """Swap in a new split atomically; every version in it must have a ready lane."""
        for version in (*split.versions, *([split.shadow_version] if split.shadow_version else [])):
            if version not in self.lanes:
                raise InvalidInput(
                    f"version {version!r} has no replicas in {self.name!r}", field="weights"
                )
        self.split = split

    def make_primary(self, version: str) -> None:
        self.lane(version)
        self.primary_version = version

    # ----- requests ---------------------------------------------------------------------------
    def route(self, user_key: str | None, forced: str | None) -> VersionLane:
        """The lane for one request: a forced version or alias, else the split (sticky by user)."""
        if forced:
            return self.lane(forced)
        split = self.split
        if len(split.weights) == 1:
            return self.lanes[split.weights[0][0]]
        return self.lanes[choose_version(split, user_key, self._rng)]

    def mirror(self, lane: VersionLane, items: list[Any], outputs: list[Any]) -> None:
        """Maybe send the same items to the shadow version, in the background."""
        split = self.split
        shadow = split.shadow_version
        if shadow is None or shadow == lane.version or not should_shadow(split, self._rng):
            return
        if len(self._shadow_tasks) >= MAX_SHADOW_INFLIGHT:
            self._metrics.shadow_skipped.labels(self.name).inc()
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow(self.lanes[shadow], items, outputs)
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self, lane: VersionLane, items: list[Any], primary_outputs: list[Any]
    ) -> None:
        started = time.perf_counter()
        try:
            outputs = await lane.infer(items)
        except AiscaleError as exc:
            lane.observe(status_for(exc), time.perf_counter() - started)
            return
        except Exception:  # a task boundary: a shadow failure is logged, never raised
            logger.exception("shadow request to %s version %s failed", self.name, lane.version)
            lane.observe(500, time.perf_counter() - started)
            return
        lane.observe(200, time.perf_counter() - started)
        for primary, shadow in zip(primary_outputs, outputs, strict=True):
            lane.observe_metric(DIVERGENCE_METRIC, divergence(primary, shadow))
