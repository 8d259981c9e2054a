"""The gateway's state: running deployments, keys, limits and metrics, and the admin actions.

The ASGI app (``app.py``) translates HTTP into calls on this object. Registry calls are
synchronous SQL, so they run in a worker thread (``anyio.to_thread``) and never on the
hot path: keys are refreshed in the background, deployments resolved only by admin actions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from prometheus_client import CollectorRegistry

from aiscale.config import DeploymentConfig
from aiscale.contracts.clock import Clock, SystemClock
from aiscale.contracts.fleet import FleetSnapshot, ScaleRecord
from aiscale.contracts.split import TrafficSplit
from aiscale.data.quality_window import QualitySettings, QualityWindows
from aiscale.errors import Conflict, InvalidInput, NotFound, Overloaded, RateLimited
from aiscale.gpus import GpuPool, GpuPoolConfig, Reservation
from aiscale.llm.ledger import TokenLedger, make_ledger
from aiscale.llm.ledger_config import LedgerConfig
from aiscale.monitor.config import MonitorConfig
from aiscale.monitor.live import LiveMonitor
from aiscale.replicas.pool import ReplicaRuntime
from aiscale.rollout.live import RolloutManager, RolloutMetrics, RolloutRecords
from aiscale.rollout.sync import RolloutSync
from aiscale.scaling.controller import VersionAutoscaler
from aiscale.serving.auth import Caller, KeyRing
from aiscale.serving.capturing import CaptureBackend, RequestCapture
from aiscale.serving.deployment import Deployment
from aiscale.serving.lane import DeploymentSpec, VersionLane
from aiscale.serving.limits import RateLimiter
from aiscale.serving.llm.context import LlmContext
from aiscale.serving.metrics import GatewayMetrics
from aiscale.serving.specs import engine_of_version, spec_from_config

if TYPE_CHECKING:
    from aiscale.serving.shared_state import SharedState
    from aiscale.serving.tracing import RequestTracing

logger = logging.getLogger(__name__)


class ControlStore(Protocol):
    """The registry as the gateway needs it; every method is called from a worker thread."""

    def active_keys(self) -> list[Any]:
        """Records with ``key_id``, ``key_hash``, ``scopes`` and ``rate_limit_per_s``."""
        ...

    def resolve_version(self, model: str, version: str | None) -> Any:
        """The version record for a version number or alias (``None``: the newest)."""
        ...

    def save_deployment(self, config: DeploymentConfig) -> None:
        """Persist a deployment's wanted state, so a restarted server comes back the same."""
        ...

    def forget_deployment(self, name: str) -> None:
        """Drop a removed deployment's saved state (no-op when none was saved), so a
        restarted server does not bring it back."""
        ...


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    max_body_bytes: int = 4 * 1024 * 1024
    drain_timeout_s: float = 30.0
    key_refresh_s: float = 2.0
    server_name: str = "aiscale"
    server_version: str = "0.1.0"
    #: How often splits and rollouts are read back from the registry (several gateways).
    split_poll_s: float = 0.5
    #: Where replicas run (local processes, or Ray actors); admin deploys use it too.
    runtime: ReplicaRuntime = ReplicaRuntime()
    #: Whether the server may run without API keys while none exists (``serving/auth.py``);
    #: decided at start-up (``--insecure``, or loopback with no key ever created).
    is_open_allowed: bool = True
    #: ``Host`` names accepted besides the bound address and ``localhost`` (``origin.py``).
    allowed_hosts: tuple[str, ...] = ()
    #: Browser origins allowed to call the inference API cross-site (CORS); none by default.
    cors_origins: tuple[str, ...] = ()
    #: Secret of the owned request ids (``serving/request_ids.py``); empty: random per process.
    request_id_key: bytes = b""
    #: A request body not all received within this many seconds is answered 408.
    body_timeout_s: float = 30.0
    #: Whether ``/metrics`` needs a key with the ``metrics`` scope (open otherwise).
    is_metrics_key_required: bool = False
    #: The most items (OIP v2 rows, embeddings inputs) one request may carry; a lane's queue
    #: bound (``max_queue``) caps it further. Checked before any item is decoded (413).
    max_items_per_request: int = 1024


class Gateway:
    """Owns every deployment and background task of one server process."""

    def __init__(
        self,
        settings: GatewaySettings,
        specs: list[DeploymentSpec],
        *,
        metrics_registry: CollectorRegistry | None = None,
        control: ControlStore | None = None,
        capture: CaptureBackend | None = None,
        monitor: MonitorConfig | None = None,
        gpus: GpuPoolConfig | None = None,
        shared: SharedState | None = None,
        clock: Clock | None = None,
        tracing: RequestTracing | None = None,
        ledger: TokenLedger | None = None,
    ) -> None:
        self.settings = settings
        #: OpenTelemetry spans of requests and batches; ``None`` (the default): tracing off.
        self.tracing = tracing
        #: The time of every control loop built here (a test passes a ``ManualClock``).
        self.clock: Clock = clock if clock is not None else SystemClock()
        #: Redis for rate limits and the response cache (``None``: both in process).
        self.shared = shared
        self.metrics_registry = metrics_registry or CollectorRegistry()
        #: Devices, team quotas and waiting GPU requests (NVML discovery unless configured).
        self.gpus = GpuPool.from_config(
            gpus if gpus is not None else GpuPoolConfig(),
            metrics_registry=self.metrics_registry,
            clock=self.clock,
        )
        self.metrics = GatewayMetrics(self.metrics_registry)
        #: What the LLM lanes share: engine connections, the routers' Redis, and the token
        #: ledger (in process unless one is given, so every request's usage is booked).
        self.llm = LlmContext(
            redis_url=shared.settings.url if shared is not None else None,
            key_prefix=shared.settings.key_prefix if shared is not None else "aiscale:",
            ledger=ledger
            if ledger is not None
            else make_ledger(
                LedgerConfig(),
                redis_url=None,
                key_prefix="aiscale:",
                metrics_registry=self.metrics_registry,
            ),
        )
        self.keyring = KeyRing(is_open_allowed=settings.is_open_allowed)
        self.limiter = RateLimiter()
        self.control = control
        #: Every answered request's record, made durable before the answer is sent.
        self.capture = RequestCapture(capture) if capture is not None else None
        #: Recent examples of deployments with a ``quality:`` section, checked on a window.
        self.quality = QualityWindows(self.metrics_registry, clock=self.clock)
        self._initial_specs = list(specs)
        self.deployments: dict[str, Deployment] = {}
        #: The config each deployment was made from, kept to persist later changes.
        self.configs: dict[str, DeploymentConfig] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._admin_lock = asyncio.Lock()
        # The control loops below are composed here and see this gateway only as their
        # ``Fleet`` (contracts/fleet.py), plus the narrow protocols each declares.
        self.rollouts = RolloutManager(
            self,
            control if isinstance(control, RolloutRecords) else None,
            metrics=RolloutMetrics(self.metrics_registry),
            clock=self.clock,
        )
        #: Follows splits and rollouts other gateways change; takes over orphaned rollouts.
        self.rollout_sync = RolloutSync(
            self, self.rollouts, control, poll_s=settings.split_poll_s, clock=self.clock
        )
        self.is_ready = False
        self.is_draining = False
        #: Deployments refusing ``x-aiscale-priority: low`` requests (the monitor's ``shed``).
        self.shedding: set[str] = set()
        #: The last change of each (deployment, version)'s wanted count and its cause.
        self._last_scale: dict[tuple[str, str], ScaleRecord] = {}
        #: Requests so far that named a model no deployment serves (``requested_deployment``).
        self._num_unknown_model_requests = 0
        monitor_config = monitor if monitor is not None else MonitorConfig()
        self.monitor = (
            LiveMonitor(
                self,
                monitor_config,
                rollouts=self.rollouts,
                quality=self.quality,
                unknown_models=self,
                clock=self.clock,
            )
            if monitor_config.is_enabled
            else None
        )

    async def start(self) -> None:
        await self.refresh_keys()
        if self.keyring.is_open:
            logger.warning("no API keys: every caller may call everything until a key is created")
        if self.capture is not None:
            await self.capture.backend.start()
        started = [self._new_deployment(spec) for spec in self._initial_specs]
        results = await asyncio.gather(*(d.start() for d in started), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            # Leave no orphan replica behind when one deployment cannot start.
            await asyncio.gather(*(d.stop(0.0) for d in started), return_exceptions=True)
            if self.capture is not None:
                await self.capture.backend.stop(0.0)
            raise failures[0]
        self.deployments = {d.spec.name: d for d in started}
        try:
            for name in self.deployments:
                await self.refresh_aliases(name)
            await self.rollouts.resume_all()
        except BaseException:
            await self.stop()
            raise
        if self.control is not None:
            self._spawn(self._refresh_keys_forever(), "key-refresh")
            self._spawn(self.rollout_sync.run(), "rollout-sync")
        self._spawn(self.quality.run(self._quality_settings), "data-quality")
        if self.monitor is not None:
            self.monitor.start()
        self.is_ready = True

    async def stop(self) -> None:
        """Drain in-flight work with a deadline, then stop replicas and background tasks."""
        self.is_draining = True
        self.rollouts.is_stopping = True  # the follower takes nothing over from now on
        self.gpus.close()  # waiting GPU requests fail now rather than at their deadline
        if self.monitor is not None:
            await self.monitor.stop()  # first: no action may start while the rest stops
        await self.rollouts.stop()
        await asyncio.gather(
            *(d.stop(self.settings.drain_timeout_s) for d in self.deployments.values())
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.capture is not None:
            await self.capture.backend.stop(self.settings.drain_timeout_s)
        await self.llm.aclose()
        if self.shared is not None:
            await self.shared.aclose()
        if self.tracing is not None:  # last: the spans of the drain are exported too
            await anyio.to_thread.run_sync(self.tracing.shutdown)

    def _new_deployment(self, spec: DeploymentSpec) -> Deployment:
        return Deployment(
            spec,
            self.metrics,
            self.gpus,
            self.shared.cache if self.shared is not None else None,
            self._autoscaler_for,
            self.tracing,
            self.llm,
        )

    def _autoscaler_for(self, spec: DeploymentSpec, lane_id: int) -> VersionAutoscaler:
        """The autoscaler of an autoscaled lane: it sees this gateway only as its Fleet."""
        assert spec.autoscaling is not None
        return VersionAutoscaler(
            self,
            self.clock,
            spec.name,
            spec.version,
            policy=spec.autoscaling.policy,
            knobs=spec.autoscaling.knobs,
            interval_s=spec.autoscaling.decision_interval_s,
            metrics=self.metrics,
            lane_id=lane_id,
            history_source=None
            if self.monitor is None
            else functools.partial(self.monitor.stored_rate, spec.name, spec.version),
        )

    def _quality_settings(self) -> dict[str, QualitySettings]:
        return {
            name: d.spec.quality for name, d in self.deployments.items() if d.spec.quality
        }

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----- requests --------------------------------------------------------------------
    def deployment(self, name: str) -> Deployment:
        found = self.deployments.get(name)
        if found is None:
            raise NotFound(f"no deployment named {name!r}", field="model")
        return found

    def requested_deployment(self, name: str) -> Deployment:
        """``deployment(name)`` for a request that names a model (inference, metadata): an
        unknown name is counted (``aiscale_gateway_unknown_model_requests_total``, and for the
        monitor) before the ``NotFound``. Admin calls use ``deployment`` and are not counted."""
        found = self.deployments.get(name)
        if found is None:
            self._num_unknown_model_requests += 1
            self.metrics.unknown_model_requests.inc()
            raise NotFound(f"no deployment named {name!r}", field="model")
        return found

    def num_unknown_model_requests(self) -> int:
        """Requests so far that named a model no deployment serves (the monitor diffs it)."""
        return self._num_unknown_model_requests

    async def admit(self, caller: Caller, num_items: int = 1) -> None:
        """Apply the caller's rate limit, counted in items (a request of ``num_items`` costs
        that many); raises ``RateLimited`` with the wait in seconds.

        In process by default; with Redis, one atomic call shared by every gateway (this
        gateway's own bucket while Redis is unreachable, see ``shared_state.py``)."""
        if caller.rate_limit_per_s is None:
            return
        if self.shared is None:
            wait_s = self.limiter.try_take(
                caller.key_id, caller.rate_limit_per_s, time.monotonic(), num_items
            )
        else:
            wait_s = await self.shared.limits.try_take(
                caller.key_id, caller.rate_limit_per_s, num_items
            )
        if wait_s > 0:
            raise RateLimited(
                f"rate limit of {caller.rate_limit_per_s:g} items/s exceeded "
                f"(this request has {num_items})",
                retry_after_s=wait_s,
            )

    def check_priority(self, deployment: str, priority: str | None) -> None:
        """Refuse a low-priority request while ``deployment`` sheds load (503 + Retry-After).
        Callers check ``self.shedding`` first, so this costs nothing while nothing sheds."""
        if priority == "low" and deployment in self.shedding:
            retry_s = self.monitor.config.actions.shed_retry_after_s if self.monitor else 5.0
            raise Overloaded(
                f"{deployment!r} is shedding low-priority requests", retry_after_s=retry_s
            )

    # ----- admin -----------------------------------------------------------------------
    async def deploy(self, spec: DeploymentSpec) -> Deployment:
        """Create or replace a deployment with zero downtime: the new one is ready first.

        GPUs for its replicas are taken first, outside the admin lock, so that waiting for
        capacity (up to ``gpu_wait_s``) never blocks the scale-down that would free it.
        """
        reservation = await self._reserve_gpus(spec, max(1, spec.replicas))
        try:
            async with self._admin_lock:
                fresh = self._new_deployment(spec)
                try:
                    await fresh.start()
                except BaseException:
                    await fresh.stop(0.0)  # no orphan replica holds a process or a GPU
                    raise
                old = self.deployments.get(spec.name)
                self.deployments = {**self.deployments, spec.name: fresh}
                self._forget_scales(spec.name)  # fresh lanes: no one has scaled them yet
                if old is not None:
                    await old.stop(self.settings.drain_timeout_s)
                logger.info(
                    "deployed %s: model %s version %s", spec.name, spec.model, spec.version
                )
                return fresh
        finally:
            if reservation is not None:
                reservation.cancel()

    async def _reserve_gpus(self, spec: DeploymentSpec, num_replicas: int) -> Reservation | None:
        # Ray places its actors' GPUs itself (``num_gpus``); the local pool is not asked.
        if spec.gpu is None or spec.placement is not None or num_replicas <= 0:
            return None
        return await self.gpus.reserve(spec.name, spec.version, spec.gpu, num_replicas)

    async def deploy_config(self, config: DeploymentConfig) -> Deployment:
        """Resolve the version in the registry, deploy it, and persist the wanted state."""
        if self.control is None:
            raise InvalidInput("this server has no registry to deploy from", field="model")
        version = await anyio.to_thread.run_sync(
            self.control.resolve_version, config.model, config.version
        )
        deployment = await self.deploy(spec_from_config(config, version, self.settings.runtime))
        self.configs[config.name] = config
        await anyio.to_thread.run_sync(self.control.save_deployment, config)
        return deployment

    # ----- the Fleet (contracts/fleet.py): the one way control loops see and change serving ----
    def snapshot(self, deployment: str | None = None) -> tuple[FleetSnapshot, ...]:
        """Every version of ``deployment`` (all when ``None``), each deployment's primary first."""
        if deployment is None:
            chosen = list(self.deployments.values())
        else:
            found = self.deployments.get(deployment)
            chosen = [found] if found is not None else []
        return tuple(
            self._lane_snapshot(d, lane)
            for d in chosen
            for lane in sorted(d.lanes.values(), key=lambda x: x.version != d.primary_version)
        )

    def _lane_snapshot(self, deployment: Deployment, lane: VersionLane) -> FleetSnapshot:
        split = deployment.split
        share = dict(split.weights).get(lane.version, 0.0)
        in_split = share > 0 or split.shadow_version == lane.version
        is_shared = sum(1 for _, w in split.weights if w > 0) > 1 or split.shadow_version
        counts = lane.counts()
        num_batches, num_batch_items, model_s = lane.batch_totals()
        pool = lane.pool
        spec = lane.spec
        return FleetSnapshot(
            deployment=deployment.name,
            version=lane.version,
            lane_id=lane.lane_id,
            is_primary=lane.version == deployment.primary_version,
            traffic_percent=share,
            is_in_rollout=bool(in_split and is_shared),
            is_shedding=deployment.name in self.shedding,
            is_autoscaled=lane.autoscaler is not None,
            num_ready=pool.num_ready,
            num_starting=pool.num_starting,
            num_wanted=pool.num_wanted,
            num_inflight_items=pool.num_inflight_items,
            num_queued_items=lane.queue_depth,
            max_queue=spec.batching.max_queue,
            max_batch_size=spec.batching.max_batch_size,
            max_inflight_batches=spec.max_inflight_batches,
            num_arrived=lane.num_arrived,
            num_requests=counts.num_requests,
            num_errors=counts.num_errors,
            latency_s=counts.latency_s,
            num_batches=num_batches,
            num_batch_items=num_batch_items,
            model_s=model_s,
            custom_metrics=counts.metrics,
            model=spec.model,
            last_scale=self._last_scale.get((deployment.name, lane.version)),
            llm=lane.llm_signals(),
        )

    async def scale(
        self, deployment: str, num_replicas: int, *, version: str | None = None, cause: str
    ) -> None:
        """The one scale path: GPUs reserved first, the change logged with its cause, and the
        primary's wanted count persisted. A version with no share of traffic that is not the
        primary is removed (drained) when scaled to zero."""
        if num_replicas < 0:
            raise InvalidInput("replicas must be >= 0", field="replicas")
        # GPUs are reserved outside the admin lock (waiting for them must not block the
        # scale-down that frees them), sized by a look that the lock then re-checks.
        found = self.deployment(deployment)
        hinted = found.lane(version or found.primary_version)
        reservation = await self._reserve_gpus(hinted.spec, num_replicas - hinted.pool.num_wanted)
        try:
            async with self._admin_lock:
                current = self.deployment(deployment)
                lane = current.lane(version or current.primary_version)
                before = lane.pool.num_wanted
                is_primary = lane.version == current.primary_version
                has_share = lane.version in current.split.versions or (
                    lane.version == current.split.shadow_version
                )
                key = (deployment, lane.version)
                if num_replicas == 0 and not is_primary and not has_share:
                    await current.remove_lane(lane.version, self.settings.drain_timeout_s)
                    self._last_scale.pop(key, None)
                else:
                    await lane.scale(num_replicas, self.settings.drain_timeout_s)
                    self._last_scale[key] = ScaleRecord(
                        cause, self.clock.monotonic(), before, num_replicas
                    )
                logger.info(
                    "scaled %s version %s: %d -> %d replicas (%s)",
                    deployment, lane.version, before, num_replicas, cause,
                )
                config = self.configs.get(deployment)
                if is_primary and config is not None and self.control is not None:
                    # Under the lock, so two scales persist in the order they ran.
                    config = config.model_copy(update={"replicas": num_replicas})
                    self.configs[deployment] = config
                    await anyio.to_thread.run_sync(self.control.save_deployment, config)
        finally:
            if reservation is not None:
                reservation.cancel()

    async def set_split(
        self, deployment: str, split: TrafficSplit, *, primary: str | None = None, cause: str
    ) -> None:
        """Swap the split atomically; with ``primary``, make it the primary and persist it."""
        target = self.deployment(deployment)
        target.set_split(split)
        if primary is not None and primary != target.primary_version:
            target.make_primary(primary)
            await self._version_changed(deployment, primary)
        logger.info("split of %s: %s (%s)", deployment, dict(split.weights), cause)

    def set_shedding(self, deployment: str, is_shedding: bool) -> None:
        """Refuse (or accept again) ``x-aiscale-priority: low`` requests to ``deployment``."""
        if is_shedding:
            self.shedding.add(deployment)
        else:
            self.shedding.discard(deployment)

    async def warm(self, deployment: str, version: str) -> None:
        """Start ``version``'s replicas beside the serving ones; no traffic until a split says."""
        target = self.deployment(deployment)
        if version in target.lanes:
            return
        if self.control is None:
            raise Conflict("starting another version needs a registry", field="deployment")
        record = await anyio.to_thread.run_sync(
            self.control.resolve_version, target.spec.model, version
        )
        if str(record.version) in target.lanes:
            return
        spec = dataclasses.replace(
            target.spec,
            version=str(record.version),
            runtime=str(record.runtime),
            uri=str(record.uri),
            model_config=dict(record.config or {}),
            engine=engine_of_version(target.spec.engine, record),
        )
        await target.add_lane(spec)
        await self.refresh_aliases(deployment)

    async def refresh_aliases(self, deployment: str) -> None:
        """Let ``x-aiscale-version`` name versions by the model's aliases."""
        target = self.deployment(deployment)
        aliases = getattr(self.control, "aliases", None)
        if aliases is None:
            return
        try:
            target.aliases = await anyio.to_thread.run_sync(aliases, target.spec.model)
        except NotFound:
            target.aliases = {}  # a model run from a spec, unknown to the registry

    def _forget_scales(self, deployment: str) -> None:
        for key in [k for k in self._last_scale if k[0] == deployment]:
            del self._last_scale[key]

    async def undeploy(self, name: str) -> None:
        async with self._admin_lock:
            deployment = self.deployment(name)
            self.deployments = {k: v for k, v in self.deployments.items() if k != name}
            await deployment.stop(self.settings.drain_timeout_s)
            self.configs.pop(name, None)
            self._forget_scales(name)
            if self.control is not None:
                await anyio.to_thread.run_sync(self.control.forget_deployment, name)

    async def _version_changed(self, name: str, version: str) -> None:
        """Persist the deployment's new version so a restarted server serves the winner."""
        config = self.configs.get(name)
        if config is None or self.control is None:
            return
        config = config.model_copy(update={"version": version})
        self.configs[name] = config
        await anyio.to_thread.run_sync(self.control.save_deployment, config)

    async def refresh_keys(self) -> None:
        if self.control is None:
            return
        records = await anyio.to_thread.run_sync(self.control.active_keys)
        self.keyring.replace(
            (
                r.key_id,
                r.key_hash,
                frozenset(r.scopes),
                r.rate_limit_per_s,
                getattr(r, "team", None),
                getattr(r, "llm_limits", None),
            )
            for r in records
        )

    async def _refresh_keys_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.key_refresh_s)
            try:
                await self.refresh_keys()
            except Exception:  # a task boundary: keep the last good keys and say so
                logger.exception("refreshing API keys failed; keeping the previous set")
