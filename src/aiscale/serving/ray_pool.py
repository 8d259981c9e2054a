"""Replicas of one model version as Ray actors across a Ray cluster: start, route, replace, drain.

The Ray counterpart of ``LocalReplicaPool`` (both satisfy ``pool.ReplicaPool``): each replica
is a ``RayReplicaActor`` created with the deployment's resource requests (CPUs, GPUs, memory,
custom resources) and, by default, Ray's ``SPREAD`` strategy so replicas land on different
nodes. A batch travels as the argument of one actor call and its reply as the call's result,
awaited on the event loop (``await ref``); nothing blocks the loop.

A replica is lost when its actor dies (its worker or its whole node): Ray then fails the
actor's pending calls with ``RayActorError``. The pool learns of it from any in-flight batch
and from a ``watch`` call each replica holds open, fails every batch the replica held with
``ReplicaUnavailable`` naming the cause, and starts a replacement elsewhere while the wanted
count says so. The pool never forms batches and never decides status codes.

Ray is imported only when a pool first connects, so the local runtime never loads it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiscale.errors import InvalidInput, ModelLoadError, ReplicaUnavailable
from aiscale.serving.ipc import BatchReply, LoadFailedMessage
from aiscale.serving.pool import (
    ReplicaRuntime,
    least_loaded_free,
    removal_victims,
    serving_replicas,
)
from aiscale.serving.ray_replica import RayReplicaActor, RayReplicaInfo
from aiscale.serving.replica_pool import ReplicaSpec, replica_settings

if TYPE_CHECKING:
    from aiscale.config import DeploymentConfig

logger = logging.getLogger(__name__)

#: How long a TCP connect to the head may take before the address is reported unreachable
#: (``ray.init`` itself retries for minutes against a wrong address).
CONNECT_CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class RayPlacement:
    """Where and with what resources each replica of a deployment runs on Ray.

    ``address`` is passed to ``ray.init`` (``None``: start a one-node Ray in this process).
    The resource requests are Ray's actor options; ``strategy="SPREAD"`` puts replicas on
    different nodes where they fit, so losing one node loses as few replicas as possible.
    """

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    strategy: Literal["SPREAD", "DEFAULT"] = "SPREAD"
    #: A batch with no reply after this long marks its replica lost (a hung or cut-off node).
    batch_timeout_s: float = 300.0


def placement_from_config(config: DeploymentConfig, runtime: ReplicaRuntime) -> RayPlacement | None:
    """A deployment's resource requests as Ray actor options; ``None`` for the local runtime.

    CPUs default to the deployment's ``num_threads`` (else 1), so a replica's torch threads
    and its Ray reservation agree.
    """
    if runtime.kind != "ray":
        return None
    for name in ("gpu_memory_mb", "team"):
        if getattr(config, name) is not None:
            raise InvalidInput(
                f"{config.name}: the ray runtime places GPUs by count (gpus) only; "
                f"{name} needs runtime: local",
                field=name,
            )
    return RayPlacement(
        address=runtime.ray_address,
        num_cpus=config.cpus or float(config.num_threads or 1),
        num_gpus=config.gpus,
        memory_bytes=config.memory_mb * 1024 * 1024 if config.memory_mb is not None else None,
        resources=dict(config.ray_resources),
    )


@dataclass(slots=True)
class _InflightBatch:
    future: asyncio.Future[BatchReply]
    num_items: int


@dataclass(slots=True, eq=False)
class RayReplica:
    """One replica actor as the gateway sees it."""

    replica_id: int
    actor: Any
    pid: int
    node_id: str
    schema: dict[str, Any]
    load_s: float
    inflight: dict[int, _InflightBatch] = field(default_factory=dict)
    num_inflight_items: int = 0
    is_draining: bool = False
    is_dead: bool = False

    @property
    def node(self) -> str:
        """The Ray node id the actor runs on."""
        return self.node_id


_connect_lock = threading.Lock()
#: The address this process joined through ``connect`` (``""``: a local instance it started).
_connected: list[str] = []


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` once per process (blocking: call it in a thread,
    or before the event loop starts). ``None`` starts a new one-node Ray instance inside this
    process; ``"auto"`` joins the cluster last started on this machine.

    Raises ``ModelLoadError`` when Ray is not installed, the head cannot be reached, or this
    process already joined another cluster.
    """
    try:
        import ray
    except ImportError:
        raise ModelLoadError(
            "the ray runtime needs the 'ray' package: pip install 'aiscale[ray]'"
        ) from None
    with _connect_lock:
        wanted = address or ""
        if ray.is_initialized():
            # One process is one Ray driver: every pool of it shares one cluster.
            if _connected and _connected[0] != wanted:
                joined = _connected[0] or "a local instance"
                raise ModelLoadError(
                    f"this process already joined the Ray cluster at {joined}; "
                    f"it cannot also join {address or 'a local instance'}"
                )
            return
        if address is not None:
            _check_reachable(address)
        try:
            ray.init(
                # "local", not None: Ray would otherwise join whichever cluster was last
                # started on this machine (or RAY_ADDRESS) instead of starting one.
                address=address if address is not None else "local",
                namespace="aiscale",
                include_dashboard=False,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"cannot join the Ray cluster at {address}: {exc}") from None
        _connected[:] = [wanted]
    logger.info("joined the Ray cluster at %s", address or "a new local instance")


def disconnect() -> None:
    """Leave the Ray cluster joined by ``connect`` (blocking); a no-op when not joined."""
    import ray

    with _connect_lock:
        if ray.is_initialized():
            ray.shutdown()
        _connected.clear()


def _check_reachable(address: str) -> None:
    """Fail fast, with the address in the message, when nothing listens at ``host:port``."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ModelLoadError(f"Ray address {address!r} is not host:port")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_CHECK_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ModelLoadError(f"no Ray cluster at {address}: {exc.strerror or exc}") from None


def _loss_cause(replica: RayReplica, exc: BaseException) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"replica {replica.replica_id} (Ray actor pid {replica.pid} on node "
        f"{replica.node_id[:12]}) was lost: {type(exc).__name__}: {detail}"
    )[:400]


class RayReplicaPool:
    """Ray actors for one model version; the same contract as ``LocalReplicaPool``.

    ``on_change`` is called (no arguments) whenever the number of ready replicas changes;
    ``on_started`` with each replica's start time in seconds.
    """

    def __init__(
        self,
        spec: ReplicaSpec,
        placement: RayPlacement,
        *,
        on_change: Callable[[], None] | None = None,
        on_started: Callable[[float], None] | None = None,
    ) -> None:
        self.spec = spec
        self.placement = placement
        self._on_change = on_change or (lambda: None)
        self._on_started = on_started or (lambda _seconds: None)
        self._replicas: list[RayReplica] = []
        self._num_starting = 0
        self._wanted = 0
        self._batch_ids = itertools.count()
        self._replica_ids = itertools.count()
        self._capacity = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._is_stopping = False
        self._actor_class: Any = None
        self.schema: dict[str, Any] | None = None
        self.last_start_s: float | None = None
        self.num_replaced = 0

    # ----- state ---------------------------------------------------------------------
    @property
    def num_ready(self) -> int:
        return len(serving_replicas(self._replicas))

    @property
    def num_starting(self) -> int:
        return self._num_starting

    @property
    def num_wanted(self) -> int:
        return self._wanted

    @property
    def num_inflight_items(self) -> int:
        return sum(r.num_inflight_items for r in self._replicas)

    def replicas(self) -> list[RayReplica]:
        return list(self._replicas)

    # ----- lifecycle -------------------------------------------------------------------
    async def start(self, num_replicas: int) -> None:
        """Start ``num_replicas`` actors; return when all are ready (``ModelLoadError`` if not)."""
        self._wanted = num_replicas
        await asyncio.to_thread(connect, self.placement.address)
        await asyncio.to_thread(self._warn_if_no_node_fits)
        await asyncio.gather(*(self._start_one() for _ in range(num_replicas)))

    async def scale(self, num_replicas: int, *, drain_timeout_s: float = 30.0) -> None:
        """Change the replica count without failing a request (see ``LocalReplicaPool``)."""
        if num_replicas < 0:
            raise ValueError("replica count must be >= 0")
        self._wanted = num_replicas
        live = serving_replicas(self._replicas)
        missing = num_replicas - len(live) - self._num_starting
        if missing > 0:
            await asyncio.gather(*(self._start_one() for _ in range(missing)))
        elif len(live) > num_replicas:
            victims = removal_victims(live, num_replicas)
            await asyncio.gather(*(self._drain_and_stop(r, drain_timeout_s) for r in victims))

    async def stop(self, *, drain_timeout_s: float = 30.0) -> None:
        """Drain every replica (deadline ``drain_timeout_s``), kill the actors, end all tasks."""
        self._is_stopping = True
        self._wanted = 0
        await asyncio.gather(
            *(self._drain_and_stop(r, drain_timeout_s) for r in list(self._replicas))
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._capacity.set()

    # ----- dispatch --------------------------------------------------------------------
    async def acquire(self) -> RayReplica:
        """Wait for a ready replica with a free batch slot; the least loaded one wins."""
        while True:
            best = least_loaded_free(self._replicas, self.spec.max_inflight_batches)
            if best is not None:
                return best
            if self._is_stopping:
                raise ReplicaUnavailable("the server is shutting down")
            self._capacity.clear()
            await self._capacity.wait()

    def has_free_slot(self) -> bool:
        return least_loaded_free(self._replicas, self.spec.max_inflight_batches) is not None

    def send(self, replica: RayReplica, items: list[Any]) -> asyncio.Future[BatchReply]:
        """Call the replica's ``predict`` with the batch; the future resolves with its reply,
        or fails with ``ReplicaUnavailable`` if the actor is lost first."""
        if replica.is_dead:
            raise ReplicaUnavailable(f"replica {replica.replica_id} is gone")
        batch_id = next(self._batch_ids)
        future: asyncio.Future[BatchReply] = asyncio.get_running_loop().create_future()
        replica.inflight[batch_id] = _InflightBatch(future, len(items))
        replica.num_inflight_items += len(items)
        ref = replica.actor.predict.remote(batch_id, items)
        self._spawn(self._await_reply(replica, batch_id, ref), f"batch-{batch_id}")
        return future

    # ----- internals -------------------------------------------------------------------
    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _threads_per_replica(self) -> int:
        if self.spec.num_threads:
            return self.spec.num_threads
        return max(1, int(self.placement.num_cpus))

    def _actor_options(self) -> dict[str, Any]:
        placement = self.placement
        options: dict[str, Any] = {
            "num_cpus": placement.num_cpus,
            "num_gpus": placement.num_gpus,
            # The pool replaces lost replicas itself, on whichever node has room; a Ray
            # restart would bring the actor back without the pool knowing its new place.
            "max_restarts": 0,
            "max_concurrency": 2,
            "scheduling_strategy": placement.strategy,
        }
        if placement.memory_bytes is not None:
            options["memory"] = placement.memory_bytes
        if placement.resources:
            options["resources"] = dict(placement.resources)
        return options

    async def _start_one(self) -> RayReplica:
        self._num_starting += 1
        started = time.monotonic()
        try:
            replica = await self._spawn_actor()
        finally:
            self._num_starting -= 1
        self.last_start_s = time.monotonic() - started
        self._on_started(self.last_start_s)
        self._replicas.append(replica)
        if self._is_stopping or self.num_ready > self._wanted:
            # Scaled down (or stopping) while it loaded: it is not wanted any more.
            await self._drain_and_stop(replica, 1.0)
            return replica
        self._spawn(self._watch(replica), f"watch-replica-{replica.replica_id}")
        logger.info(
            "replica %d (Ray actor pid %d on node %s) of %s ready in %.2fs",
            replica.replica_id,
            replica.pid,
            replica.node_id[:12],
            self.spec.uri,
            self.last_start_s,
        )
        self._capacity.set()
        self._on_change()
        return replica

    async def _spawn_actor(self) -> RayReplica:
        import ray

        if self._actor_class is None:
            self._actor_class = ray.remote(RayReplicaActor)
        # The actor's own environment is its node's, not this process's: it gets only the
        # variables a replica needs (a variable set here, such as a spin policy, is not
        # there, so none counts as already set).
        config, env = replica_settings(
            self.spec.runtime, self.spec.config, self._threads_per_replica(), {}
        )
        actor = self._actor_class.options(**self._actor_options()).remote()
        ref = actor.load.remote(self.spec.runtime, self.spec.uri, config, env)
        try:
            info = await asyncio.wait_for(ref, self.spec.startup_timeout_s)
        except TimeoutError:
            ray.kill(actor, no_restart=True)
            raise ModelLoadError(
                f"replica for {self.spec.uri} was not ready within "
                f"{self.spec.startup_timeout_s:g}s: no Ray node may have "
                f"{self._actor_options_text()} free"
            ) from None
        except ray.exceptions.RayError as exc:
            ray.kill(actor, no_restart=True)
            raise ModelLoadError(
                f"replica actor for {self.spec.uri} failed to start: {type(exc).__name__}"
            ) from exc
        if isinstance(info, LoadFailedMessage):
            ray.kill(actor, no_restart=True)
            raise ModelLoadError(f"{info.type_name}: {info.message}")
        if not isinstance(info, RayReplicaInfo):
            ray.kill(actor, no_restart=True)
            raise ModelLoadError(f"replica sent {type(info).__name__} before ready")
        self.schema = info.schema
        return RayReplica(
            next(self._replica_ids), actor, info.pid, info.node_id, info.schema, info.load_s
        )

    def _warn_if_no_node_fits(self) -> None:
        """Say so at once when no live node could hold one replica; the actors still wait
        (up to ``startup_timeout_s``), since a Ray autoscaler may add such a node."""
        import ray

        placement = self.placement
        wanted = {"CPU": placement.num_cpus, "GPU": placement.num_gpus, **placement.resources}
        if placement.memory_bytes is not None:
            wanted["memory"] = float(placement.memory_bytes)
        wanted = {name: amount for name, amount in wanted.items() if amount > 0}
        for node in ray.nodes():  # type: ignore[no-untyped-call]
            have = node.get("Resources") or {}
            if node.get("Alive") and all(have.get(k, 0.0) >= v for k, v in wanted.items()):
                return
        logger.warning(
            "no node of the Ray cluster has %s for a replica of %s; waiting up to %gs for one",
            self._actor_options_text(),
            self.spec.uri,
            self.spec.startup_timeout_s,
        )

    def _actor_options_text(self) -> str:
        placement = self.placement
        parts = [f"num_cpus={placement.num_cpus:g}", f"num_gpus={placement.num_gpus:g}"]
        if placement.memory_bytes is not None:
            parts.append(f"memory={placement.memory_bytes} bytes")
        parts.extend(f"{name}={amount:g}" for name, amount in placement.resources.items())
        return ", ".join(parts)

    async def _await_reply(self, replica: RayReplica, batch_id: int, ref: Any) -> None:
        import ray

        try:
            reply = await asyncio.wait_for(ref, self.placement.batch_timeout_s)
        except TimeoutError:
            await self._handle_loss(
                replica,
                f"replica {replica.replica_id} (Ray actor pid {replica.pid}) sent no reply "
                f"within {self.placement.batch_timeout_s:g}s",
            )
            return
        except ray.exceptions.RayActorError as exc:
            await self._handle_loss(replica, _loss_cause(replica, exc))
            return
        except ray.exceptions.RayError as exc:
            # The call itself failed (not the model, whose errors come back in the reply).
            reply = BatchReply(batch_id, error_type=type(exc).__name__, error_message=str(exc))
        batch = replica.inflight.pop(batch_id, None)
        if batch is None:
            return
        replica.num_inflight_items -= batch.num_items
        if not batch.future.done():
            batch.future.set_result(reply)
        self._capacity.set()

    async def _watch(self, replica: RayReplica) -> None:
        """Hold the replica's ``watch`` call open; it fails when the actor or its node dies."""
        import ray

        try:
            await replica.actor.watch.remote()
            cause = f"replica {replica.replica_id} stopped"
        except ray.exceptions.RayError as exc:
            cause = _loss_cause(replica, exc)
        await self._handle_loss(replica, cause)

    async def _handle_loss(self, replica: RayReplica, cause: str) -> None:
        """Fail what the replica held, forget it, and replace it while it is wanted."""
        if replica.is_dead:
            return
        import ray

        was_expected = replica.is_draining
        replica.is_dead = True
        if replica in self._replicas:
            self._replicas.remove(replica)
        self._fail_inflight(replica, cause)
        ray.kill(replica.actor, no_restart=True)
        self._on_change()
        self._capacity.set()
        if was_expected or self._is_stopping:
            return
        logger.error("%s while serving; replacing it", cause)
        if self.num_ready + self._num_starting < self._wanted:
            self.num_replaced += 1
            try:
                await self._start_one()
            except ModelLoadError:
                logger.exception("replacement of replica %d failed", replica.replica_id)

    def _fail_inflight(self, replica: RayReplica, cause: str) -> None:
        for batch in replica.inflight.values():
            if not batch.future.done():
                batch.future.set_exception(ReplicaUnavailable(cause))
        replica.inflight.clear()
        replica.num_inflight_items = 0

    async def _drain_and_stop(self, replica: RayReplica, drain_timeout_s: float) -> None:
        import ray

        replica.is_draining = True
        self._on_change()
        pending = [b.future for b in replica.inflight.values()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, drain_timeout_s))
        replica.is_dead = True
        if replica in self._replicas:
            self._replicas.remove(replica)
        self._fail_inflight(replica, f"replica {replica.replica_id} was stopped")
        ray.kill(replica.actor, no_restart=True)
        self._on_change()
