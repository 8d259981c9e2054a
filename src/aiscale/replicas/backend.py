"""The seam under the replica pool: how one kind of replica is started, fed, stopped and watched.

``ReplicaPool`` (``pool.py``) holds everything replicas of every kind share: the wanted count,
scaling and draining, the least-loaded choice, the batches in flight and what happens to them
when a replica is lost, replacement, leases. A ``ReplicaBackend`` holds only what differs
between kinds: a process on this machine over a socket pair (``local.py``), a Ray actor
(``ray_pool.py``), and next an LLM engine process answering HTTP. It is kept to four methods so
that a new kind is one small class and never a change to the pool.

This module must never import an implementation, the web framework or Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiscale.replicas.ipc import BatchReply
from aiscale.replicas.tracing import TraceExport


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """What every replica of this pool loads, and how it is run."""

    runtime: str
    uri: str
    config: dict[str, Any] = field(default_factory=dict)
    #: Batches sent to one replica before its answer; 1 keeps batches large, 2 overlaps I/O.
    max_inflight_batches: int = 1
    startup_timeout_s: float = 120.0
    #: torch/OpenMP threads per replica; ``None``: the backend decides (local processes split
    #: the machine's cores over the replicas, Ray actors use the CPUs they reserve).
    num_threads: int | None = None
    #: Where the replica exports its model spans; ``None``: tracing off (nothing imported).
    tracing: TraceExport | None = None


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """What a backend reports once a replica is ready: where it runs and what it serves."""

    pid: int
    #: ``local`` for a process on this machine, else where the backend placed it (a Ray node id).
    node: str
    #: The model's declared schema (``Schema.to_json()``).
    schema: dict[str, Any]
    #: Seconds the replica spent loading the model.
    load_s: float


class ReplicaLease(Protocol):
    """Resources one replica holds (e.g. GPU devices) from before its start until it exits."""

    @property
    def env(self) -> Mapping[str, str]:
        """Variables added to the replica's environment (e.g. ``CUDA_VISIBLE_DEVICES``)."""
        ...

    def serving(self) -> None:
        """Called once, when the replica is ready to serve."""
        ...

    def release(self) -> None:
        """Give the resources back; called at least once when the replica ends (idempotent)."""
        ...


class ReplicaResources(Protocol):
    """Per-replica resources of a pool (the gateway's GPU pool implements it)."""

    async def acquire(self) -> ReplicaLease:
        """A lease for one replica about to start; may wait, raises an ``AiscaleError``."""
        ...


HandleT = TypeVar("HandleT")


class ReplicaBackend(Protocol[HandleT]):
    """Starts, feeds, stops and watches replicas of one kind; ``HandleT`` is its own handle.

    The pool calls ``spawn`` for each replica it wants, then ``wait_dead`` once in a task that
    lives as long as the replica, ``send`` for each batch, and ``stop`` when the replica is no
    longer wanted or has died (so ``stop`` must accept a replica that already ended, and may be
    called more than once). A backend keeps no count of replicas and never retries anything:
    the pool decides.
    """

    async def spawn(
        self, replica_id: int, *, num_replicas: int, lease: ReplicaLease | None
    ) -> tuple[HandleT, ReplicaInfo]:
        """Start one replica and return once it is ready to serve.

        ``num_replicas`` is how many the pool wants in all (a backend may size threads by it);
        ``lease`` holds the environment to add for it (its devices), if any. Raises
        ``ModelLoadError`` naming the cause when the model does not load, the replica does not
        answer within the spec's ``startup_timeout_s``, or it cannot be placed; nothing of the
        attempt is left running.
        """
        ...

    def send(
        self, handle: HandleT, items: list[Any], trace_context: str | None = None
    ) -> asyncio.Future[BatchReply]:
        """Hand one batch to the replica (without blocking); the future resolves with its reply.

        ``trace_context`` is the batch span's W3C ``traceparent`` when tracing is on; a
        backend that can trace passes it on with the batch, one that cannot ignores it.

        A model error comes back inside the ``BatchReply``. The future fails with
        ``ReplicaUnavailable`` naming the cause only when the replica is lost with the batch
        (the pool then treats the whole replica as lost), and may simply stay pending when the
        replica dies: ``wait_dead`` reports that. The pool cancels the future when it gives up
        on the batch.
        """
        ...

    async def stop(self, handle: HandleT, timeout_s: float) -> None:
        """Ask the replica to finish and exit, and end it by force after ``timeout_s``."""
        ...

    async def wait_dead(self, handle: HandleT) -> str:
        """Return once the replica has ended, whether stopped, crashed or cut off, with the
        cause in words (e.g. ``replica 3 (pid 41) exited with code -9``)."""
        ...
