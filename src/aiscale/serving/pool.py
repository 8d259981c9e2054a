"""The replica pool seam: what the batcher and a version lane need from "the replicas".

Two implementations satisfy it: ``LocalReplicaPool`` (processes on this machine, the default)
and ``RayReplicaPool`` (actors on a Ray cluster). The batcher, router, autoscaler and rollouts
only ever talk to these protocols, so they work unchanged on either. This module must never
import an implementation, the web framework or Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from aiscale.serving.ipc import BatchReply


class ReplicaHandle(Protocol):
    """One replica as the admin API shows it."""

    @property
    def replica_id(self) -> int: ...

    @property
    def pid(self) -> int: ...

    @property
    def node(self) -> str:
        """Where it runs: ``local`` for a process on this machine, else the Ray node id."""
        ...

    @property
    def is_dead(self) -> bool: ...


ReplicaT = TypeVar("ReplicaT", bound=ReplicaHandle)


class BatchTarget(Protocol[ReplicaT]):
    """The batcher's view: pick a replica with a free slot, hand it a batch.

    ``send`` returns a future that resolves with the replica's ``BatchReply``, or fails with
    ``ReplicaUnavailable`` naming the cause when the replica is lost with the batch on it
    (the batcher then retries the batch up to ``max_retries`` times).
    """

    @property
    def num_ready(self) -> int: ...

    @property
    def num_starting(self) -> int: ...

    async def acquire(self) -> ReplicaT: ...

    def has_free_slot(self) -> bool: ...

    def send(self, replica: ReplicaT, items: list[Any]) -> asyncio.Future[BatchReply]: ...


class ReplicaPool(BatchTarget[ReplicaT], Protocol[ReplicaT]):
    """A lane's view: the replicas of one model version, started, scaled and stopped.

    ``start`` raises ``ModelLoadError`` when a replica cannot load; ``scale`` and ``stop``
    never fail a request that a replica holds before ``drain_timeout_s``. A replica lost
    while wanted is replaced and counted in ``num_replaced``.
    """

    @property
    def schema(self) -> dict[str, Any] | None: ...

    @property
    def last_start_s(self) -> float | None: ...

    @property
    def num_replaced(self) -> int: ...

    @property
    def num_wanted(self) -> int: ...

    @property
    def num_inflight_items(self) -> int: ...

    def replicas(self) -> list[ReplicaT]: ...

    async def start(self, num_replicas: int) -> None: ...

    async def scale(self, num_replicas: int, *, drain_timeout_s: float = 30.0) -> None: ...

    async def stop(self, *, drain_timeout_s: float = 30.0) -> None: ...


class DispatchState(Protocol):
    """What both pools' replicas hold for dispatch: the choice below reads only this."""

    @property
    def is_draining(self) -> bool: ...

    @property
    def is_dead(self) -> bool: ...

    @property
    def inflight(self) -> Sized: ...

    @property
    def num_inflight_items(self) -> int: ...


DispatchT = TypeVar("DispatchT", bound=DispatchState)


def serving_replicas(replicas: Iterable[DispatchT]) -> list[DispatchT]:
    """The replicas that take new batches: neither draining nor dead."""
    return [r for r in replicas if not r.is_draining and not r.is_dead]


def least_loaded_free(
    replicas: Iterable[DispatchT], max_inflight_batches: int
) -> DispatchT | None:
    """The serving replica with a free batch slot and the fewest items in flight, if any."""
    best: DispatchT | None = None
    for replica in serving_replicas(replicas):
        if len(replica.inflight) >= max_inflight_batches:
            continue
        if best is None or replica.num_inflight_items < best.num_inflight_items:
            best = replica
    return best


def removal_victims(live: list[DispatchT], num_to_keep: int) -> list[DispatchT]:
    """Which live replicas a scale-down stops: the least loaded, since they drain fastest."""
    return sorted(live, key=lambda r: r.num_inflight_items)[: max(0, len(live) - num_to_keep)]


@dataclass(frozen=True, slots=True)
class ReplicaRuntime:
    """Where a server runs its replicas: ``local`` processes, or actors on a ``ray`` cluster.

    ``ray_address`` is what ``ray.init`` takes (``host:port`` of the head, ``auto``);
    ``None`` with ``kind="ray"`` starts a one-node Ray instance inside the server process.
    """

    kind: Literal["local", "ray"] = "local"
    ray_address: str | None = None
