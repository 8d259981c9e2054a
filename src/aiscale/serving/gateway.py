"""The gateway's state: running deployments, keys, limits and metrics, and the admin actions.

The ASGI app (``app.py``) translates HTTP into calls on this object. Registry calls are
synchronous SQL, so they run in a worker thread (``anyio.to_thread``) and never on the
hot path: keys are refreshed in the background, deployments resolved only by admin actions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from prometheus_client import CollectorRegistry

from aiscale.config import DeploymentConfig
from aiscale.errors import InvalidInput, NotFound, Overloaded, RateLimited
from aiscale.gpus import GpuDemand, GpuPool, GpuPoolConfig, Reservation
from aiscale.monitor.config import MonitorConfig
from aiscale.monitor.live import LiveMonitor
from aiscale.serving.auth import Caller, KeyRing
from aiscale.serving.batcher import BatchingSettings
from aiscale.serving.capturing import CaptureBackend, RequestCapture
from aiscale.serving.deployment import Deployment
from aiscale.serving.lane import AutoscalingSettings, DeploymentSpec
from aiscale.serving.limits import RateLimiter
from aiscale.serving.metrics import GatewayMetrics
from aiscale.serving.pool import ReplicaRuntime
from aiscale.serving.quality_window import QualitySettings, QualityWindows
from aiscale.serving.ray_pool import placement_from_config
from aiscale.serving.rollout_sync import RolloutSync
from aiscale.serving.rollouts import RolloutManager, RolloutRecords

if TYPE_CHECKING:
    from aiscale.serving.shared_state import SharedState

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


def spec_from_config(
    config: DeploymentConfig, version: Any, runtime: ReplicaRuntime | None = None
) -> DeploymentSpec:
    """A runnable spec from a deployment's config and its registry version record.

    With the Ray ``runtime`` the replicas' resources become Ray actor options and Ray, not
    the gateway's GPU pool, assigns the GPUs.
    """
    batching = config.batching
    placement = placement_from_config(config, runtime or ReplicaRuntime())
    return DeploymentSpec(
        name=config.name,
        model=config.model,
        version=str(version.version),
        runtime=str(version.runtime),
        uri=str(version.uri),
        model_config=dict(version.config or {}),
        replicas=config.replicas,
        batching=BatchingSettings(
            max_batch_size=batching.max_batch_size,
            max_batch_delay_s=batching.max_batch_delay_ms / 1000.0,
            max_queue=batching.max_queue,
            max_retries=batching.max_retries,
        ),
        timeout_s=config.timeout_ms / 1000.0,
        cache_max_bytes=config.cache.max_bytes if config.cache.is_enabled else 0,
        num_threads=config.num_threads,
        max_inflight_batches=config.max_inflight_batches,
        autoscaling=None
        if config.autoscaling is None
        else AutoscalingSettings(
            config.autoscaling.policy,
            config.autoscaling.decision_interval_s,
            dict(config.autoscaling.knobs),
        ),
        gpu=GpuDemand(
            config.gpus, config.gpu_memory_mb, config.team, config.gpu_wait_s, config.gpu_priority
        )
        if config.gpus > 0 and placement is None
        else None,
        placement=placement,
        quality=None
        if config.quality is None
        else QualitySettings(
            config.quality.to_expectations(),
            window_s=config.quality.window_s,
            interval_s=config.quality.interval_s,
            max_examples=config.quality.max_examples,
        ),
    )


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
    ) -> None:
        self.settings = settings
        #: Redis for rate limits and the response cache (``None``: both in process).
        self.shared = shared
        self.metrics_registry = metrics_registry or CollectorRegistry()
        #: Devices, team quotas and waiting GPU requests (NVML discovery unless configured).
        self.gpus = GpuPool.from_config(
            gpus if gpus is not None else GpuPoolConfig(), metrics_registry=self.metrics_registry
        )
        self.metrics = GatewayMetrics(self.metrics_registry)
        self.keyring = KeyRing()
        self.limiter = RateLimiter()
        self.control = control
        #: Every answered request's record, made durable before the answer is sent.
        self.capture = RequestCapture(capture) if capture is not None else None
        #: Recent examples of deployments with a ``quality:`` section, checked on a window.
        self.quality = QualityWindows(self.metrics_registry)
        self._initial_specs = list(specs)
        self.deployments: dict[str, Deployment] = {}
        #: The config each deployment was made from, kept to persist later changes.
        self.configs: dict[str, DeploymentConfig] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._admin_lock = asyncio.Lock()
        self.rollouts = RolloutManager(
            control if isinstance(control, RolloutRecords) else None,
            settings.drain_timeout_s,
            on_finish=self._version_changed,
            metrics=self.metrics,
        )
        #: Follows splits and rollouts other gateways change; takes over orphaned rollouts.
        self.rollout_sync = RolloutSync(self, settings.split_poll_s)
        self.is_ready = False
        self.is_draining = False
        #: Deployments refusing ``x-aiscale-priority: low`` requests (the monitor's ``shed``).
        self.shedding: set[str] = set()
        monitor_config = monitor if monitor is not None else MonitorConfig()
        self.monitor = LiveMonitor(self, monitor_config) if monitor_config.is_enabled else None

    async def start(self) -> None:
        await self.refresh_keys()
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
            await self.rollouts.resume_all(self.deployments)
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
        if self.shared is not None:
            await self.shared.aclose()

    def _new_deployment(self, spec: DeploymentSpec) -> Deployment:
        return Deployment(
            spec, self.metrics, self.gpus, self.shared.cache if self.shared is not None else None
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

    async def admit(self, caller: Caller) -> None:
        """Apply the caller's rate limit; raises ``RateLimited`` with the wait in seconds.

        In process by default; with Redis, one atomic call shared by every gateway (this
        gateway's own bucket while Redis is unreachable, see ``shared_state.py``)."""
        if caller.rate_limit_per_s is None:
            return
        if self.shared is None:
            wait_s = self.limiter.try_take(
                caller.key_id, caller.rate_limit_per_s, time.monotonic()
            )
        else:
            wait_s = await self.shared.limits.try_take(caller.key_id, caller.rate_limit_per_s)
        if wait_s > 0:
            raise RateLimited(
                f"rate limit of {caller.rate_limit_per_s:g} requests/s exceeded",
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

    async def scale(self, name: str, num_replicas: int) -> Deployment:
        if num_replicas < 0:
            raise InvalidInput("replicas must be >= 0", field="replicas")
        lane = self.deployment(name).primary
        reservation = await self._reserve_gpus(lane.spec, num_replicas - lane.pool.num_wanted)
        try:
            async with self._admin_lock:
                deployment = self.deployment(name)
                await deployment.scale(num_replicas, self.settings.drain_timeout_s)
                logger.info("scaled %s to %d replicas", name, num_replicas)
        finally:
            if reservation is not None:
                reservation.cancel()
        config = self.configs.get(name)
        if config is not None and self.control is not None:
            config = config.model_copy(update={"replicas": num_replicas})
            self.configs[name] = config
            await anyio.to_thread.run_sync(self.control.save_deployment, config)
        return deployment

    async def undeploy(self, name: str) -> None:
        async with self._admin_lock:
            deployment = self.deployment(name)
            self.deployments = {k: v for k, v in self.deployments.items() if k != name}
            await deployment.stop(self.settings.drain_timeout_s)

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
            (r.key_id, r.key_hash, frozenset(r.scopes), r.rate_limit_per_s) for r in records
        )

    async def _refresh_keys_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.key_refresh_s)
            try:
                await self.refresh_keys()
            except Exception:  # a task boundary: keep the last good keys and say so
                logger.exception("refreshing API keys failed; keeping the previous set")
