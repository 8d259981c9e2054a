"""Dynamic batching for one model version: a bounded queue, and a loop that forms batches.

Requests from all clients wait in one queue. Whenever a replica has a free slot, the loop
takes up to ``max_batch_size`` items. It waits for more only while fewer are queued than
the recent demand suggests will come — the size of the last batch — and at most
``max_batch_delay_s``, counted from when both a replica was free and an item was waiting.
A lone client therefore never waits for a batch that will not fill, and under load batches
grow to what the traffic gives. Counting the delay from the free replica (not from the
oldest arrival) matters under closed-loop load: requests that queued behind a busy replica
are not sent alone the moment it frees, which would split clients into two alternating
groups and halve the batch size.

Never blocks the event loop, never runs model code, never touches storage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiscale.errors import DeadlineExceeded, Overloaded, ReplicaUnavailable
from aiscale.policies.batching import batch_size_to_take
from aiscale.replicas.ipc import BatchReply
from aiscale.replicas.target import BatchTarget, reply_outputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchingSettings:
    max_batch_size: int = 64
    max_batch_delay_s: float = 0.010
    max_queue: int = 2048
    #: How often a batch whose replica died is sent again (0: fail it with 503 at once).
    max_retries: int = 1


@dataclass(frozen=True, slots=True)
class BatchObservation:
    """What the batcher reports about each batch it completes (for metrics)."""

    size: int
    queue_s: tuple[float, ...]
    model_s: float
    is_ok: bool


@dataclass(slots=True)
class _Pending:
    item: Any
    future: asyncio.Future[Any]
    enqueued_s: float
    deadline_s: float
    attempts: int = 0


class Batcher:
    """Queue and batch-forming loop for one model version; owns one background task."""

    def __init__(
        self,
        pool: BatchTarget[Any],
        settings: BatchingSettings,
        *,
        on_batch: Callable[[BatchObservation], None] | None = None,
        on_cold_arrival: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self._on_batch = on_batch or (lambda _observation: None)
        #: Called when an item arrives while no replica is ready or starting (scaled to zero).
        self._on_cold_arrival = on_cold_arrival
        #: Items accepted so far (the autoscaler's arrival counter).
        self.num_submitted = 0
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._target_size = 1
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Stop forming batches; whatever is still queued fails with ``ReplicaUnavailable``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(ReplicaUnavailable("the server is shutting down"))

    async def wait_empty(self, timeout_s: float) -> None:
        """Return when the queue is empty or ``timeout_s`` passed (used while draining)."""
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def submit(self, item: Any, timeout_s: float) -> Any:
        """Queue one item and return its output; raises ``Overloaded`` when the queue is full."""
        if len(self._queue) >= self.settings.max_queue:
            raise Overloaded(f"queue full ({self.settings.max_queue} waiting)", retry_after_s=1.0)
        if self._task is None or self._task.done():
            raise ReplicaUnavailable("this model version is not serving")
        self.num_submitted += 1
        if (
            self._on_cold_arrival is not None
            and self.pool.num_ready == 0
            and self.pool.num_starting == 0
        ):
            self._on_cold_arrival()
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        pending = _Pending(item, loop.create_future(), now, now + timeout_s)
        self._queue.append(pending)
        self._arrived.set()
        try:
            return await asyncio.wait_for(pending.future, timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout_s:.3f}s") from None

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    self._arrived.clear()
                    await self._arrived.wait()
                replica = await self.pool.acquire()
                batch = await self._form_batch(time.monotonic())
                if batch:
                    self._dispatch(replica, batch)
        except asyncio.CancelledError:
            raise
        except Exception:  # a task boundary: fail everything this loop owns, loudly
            logger.exception("batcher loop failed")
            while self._queue:
                pending = self._queue.popleft()
                if not pending.future.done():
                    pending.future.set_exception(ReplicaUnavailable("batcher failed"))
            raise

    async def _form_batch(self, replica_free_s: float) -> list[_Pending]:
        settings = self.settings
        while True:
            self._drop_finished()
            if not self._queue:
                return []
            wait_s = time.monotonic() - max(self._queue[0].enqueued_s, replica_free_s)
            take = batch_size_to_take(
                len(self._queue),
                self._target_size,
                settings.max_batch_size,
                wait_s,
                settings.max_batch_delay_s,
            )
            if take:
                return [self._queue.popleft() for _ in range(take)]
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), settings.max_batch_delay_s - wait_s)
            except TimeoutError:
                pass

    def _drop_finished(self) -> None:
        """Drop items whose caller gave up (deadline or disconnect) before they cost model time."""
        now = time.monotonic()
        while self._queue and (self._queue[0].future.done() or self._queue[0].deadline_s <= now):
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(DeadlineExceeded("deadline passed while queued"))

    def _dispatch(self, replica: Any, batch: list[_Pending]) -> None:
        self._target_size = len(batch)
        sent_s = time.monotonic()
        try:
            future = self.pool.send(replica, [p.item for p in batch])
        except ReplicaUnavailable:
            # The replica died between being chosen and being used: put the batch back.
            self._queue.extendleft(reversed(batch))
            return
        future.add_done_callback(lambda done: self._complete(batch, sent_s, done))

    def _complete(
        self, batch: list[_Pending], sent_s: float, done: asyncio.Future[BatchReply]
    ) -> None:
        queue_s = tuple(sent_s - p.enqueued_s for p in batch)
        error = done.exception()
        if isinstance(error, ReplicaUnavailable):
            retry = [p for p in batch if p.attempts < self.settings.max_retries]
            for pending in batch:
                if pending not in retry and not pending.future.done():
                    pending.future.set_exception(error)
            for pending in reversed(retry):
                pending.attempts += 1
                self._queue.appendleft(pending)
            if retry:
                self._arrived.set()
            self._on_batch(BatchObservation(len(batch), queue_s, 0.0, False))
            return
        if error is not None:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            self._on_batch(BatchObservation(len(batch), queue_s, 0.0, False))
            return
        reply = done.result()
        try:
            outputs = reply_outputs(reply)
        except Exception as exc:  # the model's error reaches every caller in the batch
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            self._on_batch(BatchObservation(len(batch), queue_s, reply.model_s, False))
            return
        for index, pending in enumerate(batch):
            if not pending.future.done():
                pending.future.set_result(outputs[index])
        self._on_batch(BatchObservation(len(batch), queue_s, reply.model_s, True))
