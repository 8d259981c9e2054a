"""The replicas of one model version over one backend: start, choose, scale, drain, replace.

``ReplicaPool`` holds the logic every kind of replica shares, written once: the wanted count;
scale-up, and scale-down that drains the least-loaded replicas first; the least-loaded choice
of a replica with a free batch slot; the batches in flight on each replica; and, when a
replica is lost, failing each of its batches with ``ReplicaUnavailable`` naming the cause (the
batcher retries or fails them) and starting a replacement while the wanted count says so.
How a replica is started, fed, stopped and watched is its ``ReplicaBackend``'s business
(``backend.py``): processes on this machine (``local.py``) or Ray actors (``ray_pool.py``).

The batcher sees the pool only as a ``BatchTarget``, the admin API each replica only as a
``ReplicaHandle`` (both in ``target.py``). The pool never forms batches, never decides status
codes, and imports no backend, no web framework and no Ray.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, Literal

from aiscale.errors import AiscaleError, ReplicaUnavailable
from aiscale.replicas.backend import (
    HandleT,
    ReplicaBackend,
    ReplicaInfo,
    ReplicaLease,
    ReplicaResources,
    ReplicaSpec,
)
from aiscale.replicas.ipc import BatchReply

logger = logging.getLogger(__name__)

#: How long a lost replica is given to end before the backend forces it.
LOST_STOP_TIMEOUT_S = 5.0
#: The drain deadline of a replica that finished starting after it stopped being wanted.
UNWANTED_DRAIN_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class ReplicaRuntime:
    """Where a server runs its replicas: ``local`` processes, or actors on a ``ray`` cluster.

    ``ray_address`` is what ``ray.init`` takes (``host:port`` of the head, ``auto``);
    ``None`` with ``kind="ray"`` starts a one-node Ray instance inside the server process.
    """

    kind: Literal["local", "ray"] = "local"
    ray_address: str | None = None


@dataclass(slots=True, eq=False)
class _InflightBatch:
    #: What the batcher holds: settled by the pool only.
    future: asyncio.Future[BatchReply]
    #: What the backend settles; cancelled when the pool gives up on the batch.
    reply: asyncio.Future[BatchReply]
    num_items: int


@dataclass(slots=True, eq=False)
class Replica(Generic[HandleT]):
    """One ready replica as the pool tracks it: the backend's handle and the batches on it."""

    replica_id: int
    handle: HandleT
    info: ReplicaInfo
    #: Per-replica resources (GPU devices), released when the replica has ended.
    lease: ReplicaLease | None = None
    inflight: set[_InflightBatch] = field(default_factory=set)
    num_inflight_items: int = 0
    is_draining: bool = False
    is_dead: bool = False

    @property
    def pid(self) -> int:
        return self.info.pid

    @property
    def node(self) -> str:
        return self.info.node

    @property
    def is_serving(self) -> bool:
        """Takes new batches: neither draining nor dead."""
        return not self.is_draining and not self.is_dead


class ReplicaPool(Generic[HandleT]):
    """The replicas of one model version, started, scaled, replaced and stopped.

    ``start`` raises ``ModelLoadError`` when a replica cannot load; ``scale`` and ``stop``
    never fail a request that a replica holds before ``drain_timeout_s``. A replica lost while
    wanted is replaced and counted in ``num_replaced``. ``on_change`` is called (no arguments)
    whenever the number of ready replicas may have changed, so the owner can export it;
    ``on_started`` with each replica's start time in seconds. ``resources`` gives each replica
    a lease (its GPUs) before it starts.
    """

    def __init__(
        self,
        spec: ReplicaSpec,
        backend: ReplicaBackend[HandleT],
        *,
        on_change: Callable[[], None] | None = None,
        on_started: Callable[[float], None] | None = None,
        resources: ReplicaResources | None = None,
    ) -> None:
        self.spec = spec
        self._backend = backend
        self._resources = resources
        self._on_change = on_change or (lambda: None)
        self._on_started = on_started or (lambda _seconds: None)
        self._replicas: list[Replica[HandleT]] = []
        self._num_starting = 0
        self._wanted = 0
        self._replica_ids = itertools.count()
        #: Set whenever a batch slot may have freed or the replicas changed; ``acquire`` waits.
        self._capacity = asyncio.Event()
        #: Watchers (one per replica) and replacements; cancelled and awaited by ``stop``.
        self._tasks: set[asyncio.Task[None]] = set()
        self._is_stopping = False
        self.schema: dict[str, Any] | None = None
        self.last_start_s: float | None = None
        self.num_replaced = 0

    # ----- state ---------------------------------------------------------------------
    @property
    def num_ready(self) -> int:
        return sum(1 for r in self._replicas if r.is_serving)

    @property
    def num_starting(self) -> int:
        return self._num_starting

    @property
    def num_wanted(self) -> int:
        return self._wanted

    @property
    def num_inflight_items(self) -> int:
        return sum(r.num_inflight_items for r in self._replicas)

    def replicas(self) -> list[Replica[HandleT]]:
        return list(self._replicas)

    # ----- lifecycle -----------------------------------------------------------------
    async def start(self, num_replicas: int) -> None:
        """Start ``num_replicas``; return when all are ready (``ModelLoadError`` if one fails)."""
        self._wanted = num_replicas
        await asyncio.gather(*(self._start_one() for _ in range(num_replicas)))

    async def scale(self, num_replicas: int, *, drain_timeout_s: float = 30.0) -> None:
        """Change the replica count without failing a request.

        New replicas take traffic only once ready; removed ones (the least loaded, since they
        drain fastest) stop taking batches at once and end after their in-flight batches are
        answered, or at ``drain_timeout_s``.
        """
        if num_replicas < 0:
            raise ValueError("replica count must be >= 0")
        self._wanted = num_replicas
        live = [r for r in self._replicas if r.is_serving]
        missing = num_replicas - len(live) - self._num_starting
        if missing > 0:
            await asyncio.gather(*(self._start_one() for _ in range(missing)))
        elif len(live) > num_replicas:
            victims = sorted(live, key=lambda r: r.num_inflight_items)[: len(live) - num_replicas]
            await asyncio.gather(*(self._drain_and_stop(r, drain_timeout_s) for r in victims))

    async def stop(self, *, drain_timeout_s: float = 30.0) -> None:
        """Drain every replica (deadline ``drain_timeout_s``), stop them, and end all tasks."""
        self._is_stopping = True
        self._wanted = 0
        await asyncio.gather(
            *(self._drain_and_stop(r, drain_timeout_s) for r in list(self._replicas))
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._capacity.set()

    # ----- dispatch ------------------------------------------------------------------
    async def acquire(self) -> Replica[HandleT]:
        """Wait for a ready replica with a free batch slot; the least loaded one wins."""
        while True:
            best = self._least_loaded_free()
            if best is not None:
                return best
            if self._is_stopping:
                raise ReplicaUnavailable("the server is shutting down")
            self._capacity.clear()
            await self._capacity.wait()

    def has_free_slot(self) -> bool:
        return self._least_loaded_free() is not None

    def send(
        self, replica: Replica[HandleT], items: list[Any], trace_context: str | None = None
    ) -> asyncio.Future[BatchReply]:
        """Hand a batch to ``replica``; the future resolves with its reply, or fails with
        ``ReplicaUnavailable`` naming the cause if the replica is lost first.
        ``trace_context`` (the batch span's ``traceparent``) travels with the batch."""
        if replica.is_dead:
            raise ReplicaUnavailable(f"replica {replica.replica_id} is gone")
        future: asyncio.Future[BatchReply] = asyncio.get_running_loop().create_future()
        reply = self._backend.send(replica.handle, items, trace_context)
        batch = _InflightBatch(future, reply, len(items))
        replica.inflight.add(batch)
        replica.num_inflight_items += batch.num_items
        batch.reply.add_done_callback(functools.partial(self._settle, replica, batch))
        return future

    # ----- internals -----------------------------------------------------------------
    def _least_loaded_free(self) -> Replica[HandleT] | None:
        """The serving replica with a free batch slot and the fewest items in flight, if any."""
        best: Replica[HandleT] | None = None
        for replica in self._replicas:
            if not replica.is_serving or len(replica.inflight) >= self.spec.max_inflight_batches:
                continue
            if best is None or replica.num_inflight_items < best.num_inflight_items:
                best = replica
        return best

    def _settle(
        self, replica: Replica[HandleT], batch: _InflightBatch, reply: asyncio.Future[BatchReply]
    ) -> None:
        """The backend settled a batch: pass its reply on, or learn that the replica is lost."""
        if batch not in replica.inflight:
            return  # already failed with its replica (and ``reply`` cancelled)
        replica.inflight.discard(batch)
        replica.num_inflight_items -= batch.num_items
        error = None if reply.cancelled() else reply.exception()
        if isinstance(error, ReplicaUnavailable):
            if not batch.future.done():
                batch.future.set_exception(error)
            # The replica is lost with this batch: so is everything else on it.
            self._run_task(self._lose(replica, str(error)), f"lose-replica-{replica.replica_id}")
        elif error is not None or reply.cancelled():
            # Not a loss the backend reports but a fault of its own: fail this batch alone.
            logger.error(
                "replica %d: the backend dropped a batch", replica.replica_id, exc_info=error
            )
            if not batch.future.done():
                batch.future.set_exception(
                    ReplicaUnavailable(f"replica {replica.replica_id} dropped the batch: {error!r}")
                )
        elif not batch.future.done():
            batch.future.set_result(reply.result())
        # The slot is offered again only now, after the reply was passed on, so that the
        # batcher learns the batch's outcome (a failed request's other items are then
        # dropped) before it forms the next batch: callbacks run in the order scheduled.
        self._capacity.set()

    def _run_task(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> Replica[HandleT]:
        self._num_starting += 1
        try:
            try:
                lease = await self._resources.acquire() if self._resources else None
            except BaseException:
                # Refused (or gave up waiting): this replica will not exist.
                self._wanted = max(0, self._wanted - 1)
                raise
            started = time.monotonic()
            replica_id = next(self._replica_ids)
            try:
                handle, info = await self._backend.spawn(
                    replica_id, num_replicas=self._wanted, lease=lease
                )
            except BaseException:
                if lease is not None:
                    lease.release()
                raise
        finally:
            self._num_starting -= 1
        replica = Replica(replica_id, handle, info, lease)
        self.schema = info.schema
        self.last_start_s = time.monotonic() - started
        self._on_started(self.last_start_s)
        self._replicas.append(replica)
        if self._is_stopping or self.num_ready > self._wanted:
            # Scaled down (or stopping) while it loaded: it is not wanted any more.
            await self._drain_and_stop(replica, UNWANTED_DRAIN_TIMEOUT_S)
            return replica
        self._run_task(self._watch(replica), f"replica-{replica_id}")
        logger.info(
            "replica %d (pid %d on %s) of %s ready in %.2fs",
            replica_id,
            info.pid,
            info.node[:12],
            self.spec.uri,
            self.last_start_s,
        )
        self._capacity.set()
        self._on_change()
        if lease is not None:
            lease.serving()
        return replica

    async def _watch(self, replica: Replica[HandleT]) -> None:
        """Wait for the replica to end (the backend says how), then handle its loss."""
        try:
            cause = await self._backend.wait_dead(replica.handle)
        except asyncio.CancelledError:
            self._fail_inflight(replica, "the server is shutting down")
            raise
        except Exception as exc:  # a task boundary: log, then treat the replica as lost
            logger.exception("watching replica %d failed", replica.replica_id)
            cause = f"replica {replica.replica_id} was lost: {type(exc).__name__}: {exc}"
        await self._lose(replica, cause)

    async def _lose(self, replica: Replica[HandleT], cause: str) -> None:
        """Fail what the replica held, forget it, end it, and replace it while it is wanted."""
        if replica.is_dead:
            return
        was_expected = replica.is_draining
        self._forget(replica, cause)
        await self._end(replica, LOST_STOP_TIMEOUT_S)
        if was_expected or self._is_stopping:
            return
        logger.error("%s while serving; replacing it", cause)
        if self.num_ready + self._num_starting < self._wanted:
            self.num_replaced += 1
            try:
                await self._start_one()
            except AiscaleError:  # a model that will not load, or no GPU for it
                logger.exception("replacement of replica %d failed", replica.replica_id)

    async def _drain_and_stop(self, replica: Replica[HandleT], drain_timeout_s: float) -> None:
        replica.is_draining = True
        self._on_change()
        deadline = time.monotonic() + drain_timeout_s
        pending = [b.future for b in replica.inflight]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        # At least half a second: a replica is told to stop, not killed, even past the deadline.
        await self._end(replica, max(0.5, deadline - time.monotonic()))
        self._forget(replica, f"replica {replica.replica_id} was stopped")

    def _forget(self, replica: Replica[HandleT], cause: str) -> None:
        """Take the replica out of the pool and fail every batch it holds (once)."""
        if replica.is_dead:
            return
        replica.is_dead = True
        if replica in self._replicas:
            self._replicas.remove(replica)
        self._fail_inflight(replica, cause)
        self._on_change()
        self._capacity.set()

    async def _end(self, replica: Replica[HandleT], timeout_s: float) -> None:
        """Stop the replica through its backend, then give its resources back."""
        try:
            await self._backend.stop(replica.handle, timeout_s)
        finally:
            if replica.lease is not None:
                replica.lease.release()

    @staticmethod
    def _fail_inflight(replica: Replica[HandleT], cause: str) -> None:
        batches = list(replica.inflight)
        replica.inflight.clear()
        replica.num_inflight_items = 0
        for batch in batches:
            if not batch.future.done():
                batch.future.set_exception(ReplicaUnavailable(cause))
            batch.reply.cancel()
