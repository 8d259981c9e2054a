"""Replicas as Ray actors across a Ray cluster: the backend, placement, and joining the cluster.

``RayActorBackend`` is the Ray counterpart of ``LocalProcessBackend`` under the same
``ReplicaPool``: each replica is a ``RayReplicaActor`` created with the deployment's resource
requests (CPUs, GPUs, memory, custom resources) and, by default, Ray's ``SPREAD`` strategy so
replicas land on different nodes. A batch travels as the argument of one actor call and its
reply as the call's result, awaited on the event loop (``await ref``); nothing blocks the loop.

A replica is lost when its actor dies (its worker or its whole node): Ray then fails the
actor's pending calls with ``RayActorError``. The backend reports it from any in-flight batch
(whose future fails with ``ReplicaUnavailable`` naming the cause) and from a ``watch`` call
each replica holds open (``wait_dead``); the pool fails the replica's batches and replaces it.
The backend never forms batches, never counts replicas and never decides status codes.

Ray is imported only when a backend first connects, so the local runtime never loads it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiscale.errors import ModelLoadError, ReplicaUnavailable
from aiscale.replicas.backend import ReplicaInfo, ReplicaLease, ReplicaSpec
from aiscale.replicas.environment import replica_settings
from aiscale.replicas.ipc import BatchReply, LoadFailedMessage
from aiscale.replicas.ray_actor import RayReplicaActor, RayReplicaInfo

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


@dataclass(slots=True, eq=False)
class RayActor:
    """One replica actor: the actor handle and where Ray placed it."""

    replica_id: int
    actor: Any
    pid: int
    node_id: str


def _loss_cause(handle: RayActor, exc: BaseException) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"replica {handle.replica_id} (Ray actor pid {handle.pid} on node "
        f"{handle.node_id[:12]}) was lost: {type(exc).__name__}: {detail}"
    )[:400]


class RayActorBackend:
    """Ray actors for one model version (a ``ReplicaBackend``), placed by ``placement``.

    The first ``spawn`` joins the cluster (``connect``, in a thread) and warns when no node
    could hold a replica.
    """

    def __init__(self, spec: ReplicaSpec, placement: RayPlacement) -> None:
        self.spec = spec
        self.placement = placement
        self._actor_class: Any = None
        self._is_connected = False
        self._connecting = asyncio.Lock()
        self._batch_ids = itertools.count()

    async def spawn(
        self, replica_id: int, *, num_replicas: int, lease: ReplicaLease | None
    ) -> tuple[RayActor, ReplicaInfo]:
        """Create an actor and wait for its ``load`` (``ModelLoadError`` if it fails, or no
        node takes the actor within ``startup_timeout_s``). Ray assigns the actor's devices
        itself (``num_gpus``), so ``lease`` is not used; ``num_replicas`` neither."""
        await self._connect()
        import ray

        if self._actor_class is None:
            self._actor_class = ray.remote(RayReplicaActor)
        # The actor's own environment is its node's, not this process's: it gets only the
        # variables a replica needs (a variable set here, such as a spin policy, is not
        # there, so none counts as already set).
        num_threads = self.spec.num_threads or max(1, int(self.placement.num_cpus))
        config, env = replica_settings(self.spec.runtime, self.spec.config, num_threads, {})
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
        except BaseException:  # cancelled while it loaded: leave nothing running
            ray.kill(actor, no_restart=True)
            raise
        if isinstance(info, LoadFailedMessage):
            ray.kill(actor, no_restart=True)
            raise ModelLoadError(f"{info.type_name}: {info.message}")
        if not isinstance(info, RayReplicaInfo):
            ray.kill(actor, no_restart=True)
            raise ModelLoadError(f"replica sent {type(info).__name__} before ready")
        handle = RayActor(replica_id, actor, info.pid, info.node_id)
        return handle, ReplicaInfo(info.pid, info.node_id, info.schema, info.load_s)

    def send(
        self, handle: RayActor, items: list[Any], trace_context: str | None = None
    ) -> asyncio.Future[BatchReply]:
        """Call the actor's ``predict`` with the batch; the task's result is the reply."""
        # TODO(issue 18): actors open no model span yet; the gateway's batch span still
        # covers the call. ``trace_context`` is accepted and dropped.
        del trace_context
        batch_id = next(self._batch_ids)
        ref = handle.actor.predict.remote(batch_id, items)
        return asyncio.create_task(
            self._reply(handle, batch_id, ref), name=f"replica-{handle.replica_id}-batch"
        )

    async def stop(self, handle: RayActor, timeout_s: float) -> None:
        """Kill the actor at once: it holds no work of its own beyond the batches the pool
        already drained, so there is nothing to wait ``timeout_s`` for."""
        import ray

        ray.kill(handle.actor, no_restart=True)

    async def wait_dead(self, handle: RayActor) -> str:
        """Hold the actor's ``watch`` call open: it fails when the actor or its node dies."""
        import ray

        try:
            await handle.actor.watch.remote()
        except ray.exceptions.RayError as exc:
            return _loss_cause(handle, exc)
        return f"replica {handle.replica_id} stopped"

    async def _reply(self, handle: RayActor, batch_id: int, ref: Any) -> BatchReply:
        import ray

        try:
            reply: BatchReply = await asyncio.wait_for(ref, self.placement.batch_timeout_s)
        except TimeoutError:
            raise ReplicaUnavailable(
                f"replica {handle.replica_id} (Ray actor pid {handle.pid}) sent no reply "
                f"within {self.placement.batch_timeout_s:g}s"
            ) from None
        except ray.exceptions.RayActorError as exc:
            raise ReplicaUnavailable(_loss_cause(handle, exc)) from None
        except ray.exceptions.RayError as exc:
            # The call itself failed (not the model, whose errors come back in the reply).
            return BatchReply(batch_id, error_type=type(exc).__name__, error_message=str(exc))
        return reply

    async def _connect(self) -> None:
        async with self._connecting:
            if self._is_connected:
                return
            await asyncio.to_thread(connect, self.placement.address)
            await asyncio.to_thread(self._warn_if_no_node_fits)
            self._is_connected = True

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
