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

A request enters the queue as one unit (one entry, one future, whatever its item count; the
queue's bound counts items) and is split across batches as they take its items. When its
caller has been answered (its error included: deadline, a failed batch, cancellation), what
is left of it in the queue is skipped and never reaches a replica.

Never blocks the event loop, never runs model code, never touches storage.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiscale.errors import DeadlineExceeded, Overloaded, PayloadTooLarge, ReplicaUnavailable
from aiscale.policies.batching import batch_size_to_take
from aiscale.replicas.ipc import BatchReply
from aiscale.replicas.target import BatchTarget, reply_outputs

if TYPE_CHECKING:
    from aiscale.serving.tracing import LaneTracing

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


@dataclass(slots=True, eq=False)
class _Request:
    """One caller's items: answered together, through one future, once every item is back.

    ``num_queued`` is how many of its items sit in the queue and are counted in the batcher's
    depth. When the caller stops waiting (answered, deadline, error, cancelled) the rest is
    uncounted at once, and its slices left in the queue are skipped, never sent.
    """

    items: list[Any]
    future: asyncio.Future[list[Any]]
    enqueued_s: float
    deadline_s: float
    outputs: list[Any]
    num_unanswered: int
    num_queued: int
    #: The caller's trace context when tracing is on (the parent of its queue span).
    trace: object = None


@dataclass(slots=True, eq=False)
class _Slice:
    """A run of one request's items, ``items[start:stop]``, waiting in the queue or in a batch.

    A request enters the queue as one slice; a batch takes the head slice whole or splits it.
    """

    request: _Request
    start: int
    stop: int
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
        tracing: LaneTracing | None = None,
    ) -> None:
        self.pool = pool
        #: Queue and batch spans (``serving/tracing.py``); ``None``, the default: tracing off.
        self._tracing = tracing
        self.settings = settings
        self._on_batch = on_batch or (lambda _observation: None)
        #: Called when an item arrives while no replica is ready or starting (scaled to zero).
        self._on_cold_arrival = on_cold_arrival
        #: Items accepted so far (the autoscaler's arrival counter).
        self.num_submitted = 0
        self._queue: deque[_Slice] = deque()
        #: Items of live requests in ``_queue``; slices of finished requests are not counted.
        self._num_queued = 0
        self._arrived = asyncio.Event()
        self._target_size = 1
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (those of requests already answered are not counted)."""
        return self._num_queued

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Stop forming batches; whatever is still queued fails with ``ReplicaUnavailable``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._fail_queued(ReplicaUnavailable("the server is shutting down"))

    async def wait_empty(self, timeout_s: float) -> None:
        """Return when the queue is empty or ``timeout_s`` passed (used while draining)."""
        deadline = time.monotonic() + timeout_s
        while self._num_queued and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def submit(self, item: Any, timeout_s: float) -> Any:
        """Queue one item and return its output; see ``submit_many``."""
        return (await self.submit_many([item], timeout_s))[0]

    async def submit_many(self, items: list[Any], timeout_s: float) -> list[Any]:
        """Queue one request's items as one unit and return their outputs, in order.

        All or nothing: raises ``Overloaded`` when the queue has no room for every item
        (nothing is queued then), ``PayloadTooLarge`` when the items could never fit, and
        ``DeadlineExceeded`` after ``timeout_s``. Once the caller has its answer or error, its
        items still in the queue are skipped and never reach a replica; a batch already on a
        replica runs to its end. Costs one future and one queue entry whatever the item count.
        """
        num_items = len(items)
        max_queue = self.settings.max_queue
        if self._num_queued + num_items > max_queue:
            if num_items > max_queue:
                raise PayloadTooLarge(
                    f"{num_items} items in one request; this version queues at most {max_queue}",
                    field="inputs",
                )
            raise Overloaded(
                f"queue full ({self._num_queued} items waiting, room for {max_queue})",
                retry_after_s=1.0,
            )
        if self._task is None or self._task.done():
            raise ReplicaUnavailable("this model version is not serving")
        self.num_submitted += num_items
        if (
            self._on_cold_arrival is not None
            and self.pool.num_ready == 0
            and self.pool.num_starting == 0
        ):
            self._on_cold_arrival()
        now = time.monotonic()
        request = _Request(
            items,
            asyncio.get_running_loop().create_future(),
            now,
            now + timeout_s,
            [None] * num_items,
            num_items,
            num_items,
            None if self._tracing is None else self._tracing.current(),
        )
        self._queue.append(_Slice(request, 0, num_items))
        self._num_queued += num_items
        self._arrived.set()
        try:
            return await asyncio.wait_for(request.future, timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout_s:.3f}s") from None
        finally:
            # Answered, failed, timed out or cancelled (wait_for cancels the future): what is
            # left of the request in the queue no longer counts, and ``_take`` skips it.
            self._num_queued -= request.num_queued
            request.num_queued = 0

    async def _run(self) -> None:
        try:
            while True:
                if not self._num_queued:
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
            self._fail_queued(ReplicaUnavailable("batcher failed"))
            raise

    def _fail_queued(self, error: Exception) -> None:
        while self._queue:
            request = self._queue.popleft().request
            if not request.future.done():
                request.future.set_exception(error)
            self._uncount(request, request.num_queued)

    async def _form_batch(self, replica_free_s: float) -> list[_Slice]:
        settings = self.settings
        while True:
            self._drop_finished()
            if not self._queue:
                return []
            wait_s = time.monotonic() - max(self._queue[0].request.enqueued_s, replica_free_s)
            take = batch_size_to_take(
                self._num_queued,
                self._target_size,
                settings.max_batch_size,
                wait_s,
                settings.max_batch_delay_s,
            )
            if take:
                return self._take(take)
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), settings.max_batch_delay_s - wait_s)
            except TimeoutError:
                pass

    def _is_finished(self, request: _Request, now_s: float) -> bool:
        """Whether the caller gave up (its future is done); fails it first if past its deadline."""
        if request.future.done():
            return True
        if request.deadline_s <= now_s:
            request.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            return True
        return False

    def _uncount(self, request: _Request, num_items: int) -> None:
        num_items = min(num_items, request.num_queued)
        request.num_queued -= num_items
        self._num_queued -= num_items

    def _drop_finished(self) -> None:
        """Drop items whose caller gave up (deadline or disconnect) before they cost model time."""
        now = time.monotonic()
        while self._queue and self._is_finished(self._queue[0].request, now):
            head = self._queue.popleft()
            self._uncount(head.request, head.stop - head.start)

    def _take(self, num_items: int) -> list[_Slice]:
        """Up to ``num_items`` items of live requests from the head, splitting the last slice.

        Slices of finished requests are skipped wherever they sit, so an answered request's
        leftover items never reach a replica. Work per batch: O(slices in it).
        """
        batch: list[_Slice] = []
        now = time.monotonic()
        while num_items > 0 and self._queue:
            head = self._queue[0]
            request = head.request
            size = head.stop - head.start
            if self._is_finished(request, now):
                self._queue.popleft()
                self._uncount(request, size)
                continue
            if size <= num_items:
                self._queue.popleft()
                part = head
            else:
                part = _Slice(request, head.start, head.start + num_items, head.attempts)
                head.start += num_items
            taken = part.stop - part.start
            self._uncount(request, taken)
            batch.append(part)
            num_items -= taken
        return batch

    def _requeue(self, parts: list[_Slice]) -> None:
        """Put slices back at the head, in order (their replica was lost); finished ones go."""
        for part in reversed(parts):
            request = part.request
            if request.future.done():
                continue
            self._queue.appendleft(part)
            size = part.stop - part.start
            request.num_queued += size
            self._num_queued += size

    def _dispatch(self, replica: Any, batch: list[_Slice]) -> None:
        if len(batch) == 1 and batch[0].start == 0 and batch[0].stop == len(batch[0].request.items):
            items = batch[0].request.items
        else:
            items = []
            for part in batch:
                items.extend(part.request.items[part.start : part.stop])
        self._target_size = len(items)
        sent_s = time.monotonic()
        span: Any = None
        trace_context: str | None = None
        if self._tracing is not None:
            span, trace_context = self._tracing.start_batch(
                [part.request.trace for part in batch],
                [part.request.enqueued_s for part in batch],
                sent_s,
            )
        try:
            future = self.pool.send(replica, items, trace_context)
        except ReplicaUnavailable:
            # The replica died between being chosen and being used: put the batch back.
            if self._tracing is not None:
                self._tracing.finish_batch(span, None)
            self._requeue(batch)
            return
        future.add_done_callback(lambda done: self._complete(batch, len(items), sent_s, done))
        if self._tracing is not None:
            future.add_done_callback(functools.partial(self._tracing.finish_batch, span))

    def _complete(
        self,
        batch: list[_Slice],
        num_items: int,
        sent_s: float,
        done: asyncio.Future[BatchReply],
    ) -> None:
        # One wait per item, as the metrics count items.
        queue_s = tuple(
            sent_s - part.request.enqueued_s
            for part in batch
            for _ in range(part.stop - part.start)
        )
        error = done.exception()
        if isinstance(error, ReplicaUnavailable):
            retry: list[_Slice] = []
            for part in batch:
                if part.attempts < self.settings.max_retries:
                    part.attempts += 1
                    retry.append(part)
                elif not part.request.future.done():
                    part.request.future.set_exception(error)
            self._requeue(retry)
            if retry:
                self._arrived.set()
            self._on_batch(BatchObservation(num_items, queue_s, 0.0, False))
            return
        if error is not None:
            self._fail(batch, error)
            self._on_batch(BatchObservation(num_items, queue_s, 0.0, False))
            return
        reply = done.result()
        try:
            outputs = reply_outputs(reply)
        except Exception as exc:  # the model's error reaches every caller in the batch
            self._fail(batch, exc)
            self._on_batch(BatchObservation(num_items, queue_s, reply.model_s, False))
            return
        offset = 0
        for part in batch:
            request = part.request
            size = part.stop - part.start
            if not request.future.done():
                if size == 1:
                    request.outputs[part.start] = outputs[offset]
                else:
                    request.outputs[part.start : part.stop] = outputs[offset : offset + size]
                request.num_unanswered -= size
                if request.num_unanswered == 0:
                    request.future.set_result(request.outputs)
            offset += size
        self._on_batch(BatchObservation(num_items, queue_s, reply.model_s, True))

    @staticmethod
    def _fail(batch: list[_Slice], error: BaseException) -> None:
        """Fail every request with items in ``batch``; their other queued items are then skipped."""
        for part in batch:
            if not part.request.future.done():
                part.request.future.set_exception(error)
