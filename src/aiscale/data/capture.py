"""Lossless capture of requests and feedback: a durable append-only log with group commit.

The gateway calls ``await sink.append(record)`` and answers its client only after it returns:
by then the record is written and fdatasync'ed, so an acknowledged response keeps its record
even if the server is killed. Appends only encode the record and put it in a bounded in-memory
queue; one writer task per log takes *everything* waiting, hands it to a dedicated thread that
frames it (length and CRC) and does one write plus one fdatasync (group commit), then resolves
all those appends at once. While the thread syncs one batch, the next one gathers, so many
concurrent appends share one sync.

When the records accepted but not yet durable reach ``max_queue`` (or ``max_queue_bytes``),
``append`` raises ``Overloaded``: never silent loss, never unbounded memory. A failed write
fails its batch's appends with ``Overloaded`` and the log carries on in a new segment.

This module must never block the event loop (all file I/O runs on the writer thread) and
never drops a record it has accepted without failing that record's append.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aiscale.data.capture_record import (
    CaptureConfig,
    CaptureRecord,
    FeedbackRecord,
    Record,
    Redactor,
    decode_record,
    encode_record,
    hash_user_key,
    is_sampled,
)
from aiscale.data.capture_segment import (
    HEADER_BYTES,
    SegmentWriter,
    frame,
    iter_payloads,
    make_private_dirs,
    seal_orphans,
    try_lock,
    unlock,
)
from aiscale.errors import Conflict, Overloaded

logger = logging.getLogger(__name__)

__all__ = [
    "CaptureConfig",
    "CaptureLayout",
    "CaptureLog",
    "CaptureMetrics",
    "CaptureRecord",
    "CaptureSink",
    "FeedbackRecord",
    "hash_user_key",
    "load_or_create_salt",
    "read_records",
]

R = TypeVar("R", CaptureRecord, FeedbackRecord)

#: How long ``start`` waits for a lock held briefly by compaction sealing orphan segments.
DEFAULT_LOCK_WAIT_S = 1.0
_LOCK_POLL_S = 0.01
#: Entries of the user-key hash cache before it is emptied (bounds its memory).
_MAX_USER_HASHES = 65_536


@dataclass(frozen=True, slots=True)
class CaptureLayout:
    """Where captured data lives under a server's data dir. The logs are local folders (they
    need fsync); ``parquet_url`` is a path or an fsspec URL (object storage later)."""

    root: Path
    parquet_url: str

    @classmethod
    def from_data_dir(cls, data_dir: Path | str, parquet_url: str | None = None) -> CaptureLayout:
        root = Path(data_dir) / "capture"
        return cls(root=root, parquet_url=parquet_url or str(root / "parquet"))

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def requests_log(self) -> Path:
        return self.log_dir / "requests"

    @property
    def feedback_log(self) -> Path:
        return self.log_dir / "feedback"


#: Seconds: an fdatasync takes under a millisecond on a quiet disk and hundreds of
#: milliseconds when a virtual machine's storage stalls.
_WAIT_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class CaptureMetrics:
    """The capture metrics, created once per registry and shared by its logs (label ``log``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "aiscale_capture_records_total",
            "Records written durably to the capture log.",
            ("log",),
            registry=registry,
        )
        self.fsyncs = Counter(
            "aiscale_capture_fsyncs_total",
            "Group commits (one write and one fdatasync each) of the capture log.",
            ("log",),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "aiscale_capture_queue_depth",
            "Records accepted by the capture log and not yet durable.",
            ("log",),
            registry=registry,
        )
        self.rejected = Counter(
            "aiscale_capture_rejected_total",
            "Appends refused with Overloaded because the capture queue was full or stopped.",
            ("log",),
            registry=registry,
        )
        self.append_seconds = Histogram(
            "aiscale_capture_append_seconds",
            "Time an append waited until its record was durable (a captured response waits "
            "this long before it is sent).",
            ("log",),
            buckets=_WAIT_BUCKETS_S,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "aiscale_capture_commit_seconds",
            "Time of one group commit (one write and one fdatasync).",
            ("log",),
            buckets=_WAIT_BUCKETS_S,
            registry=registry,
        )
        self.write_errors = Counter(
            "aiscale_capture_write_errors_total",
            "Group commits that failed (their appends failed with Overloaded).",
            ("log",),
            registry=registry,
        )


class CaptureLog:
    """One durable append-only log (a folder of segments) with group commit.

    Owned by the app lifespan: ``await start()`` before the first append, ``await stop()`` at
    shutdown after in-flight requests drained. One event loop uses it; one process writes a
    folder (an exclusive lock; a second writer gets ``Conflict``)."""

    def __init__(
        self,
        directory: Path,
        config: CaptureConfig,
        metrics: CaptureMetrics,
        *,
        name: str,
        lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
    ) -> None:
        self._directory = directory
        self._lock_wait_s = lock_wait_s
        self._config = config
        self._name = name
        self._redactor = Redactor(config.redact_fields, config.redact_patterns)
        self._records = metrics.records.labels(log=name)
        self._fsyncs = metrics.fsyncs.labels(log=name)
        self._rejected = metrics.rejected.labels(log=name)
        self._write_errors = metrics.write_errors.labels(log=name)
        self._append_seconds = metrics.append_seconds.labels(log=name)
        self._commit_seconds = metrics.commit_seconds.labels(log=name)
        # Read at scrape time: no gauge update on the hot path.
        metrics.queue_depth.labels(log=name).set_function(lambda: self._num_unacked)
        self._pending: deque[tuple[bytes, asyncio.Future[None]]] = deque()
        self._in_flight: list[tuple[bytes, asyncio.Future[None]]] = []
        self._num_unacked = 0
        self._unacked_bytes = 0
        self._wake = asyncio.Event()
        self._is_running = False
        self._is_stopping = False
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._writer = SegmentWriter(directory, config.segment_bytes)
        self._lock_fd: int | None = None

    @property
    def directory(self) -> Path:
        return self._directory

    async def start(self) -> None:
        """Take the folder's writer lock, seal segments a crashed writer left open, and start
        the writer. Raises ``Conflict`` if another live process writes this folder."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lock_wait_s
        while (fd := try_lock(self._directory)) is None:
            if loop.time() >= deadline:
                raise Conflict(f"capture log {self._directory} is in use by another process")
            await asyncio.sleep(_LOCK_POLL_S)
        self._lock_fd = fd
        num_sealed = seal_orphans(self._directory)
        if num_sealed:
            logger.info("capture log %s: sealed %d segments left open", self._name, num_sealed)
        # A dedicated thread, not anyio's shared pool: batches must be written one at a time
        # in order, and must never wait behind unrelated blocking work.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"capture-{self._name}")
        self._is_running = True
        self._task = asyncio.create_task(self._write_loop(), name=f"capture-{self._name}")

    async def append(self, record: Record) -> bool:
        """Write ``record`` durably; returns True once it is on stable storage, or False at once
        if the request is sampled out (feedback is never sampled out).

        Raises ``Overloaded`` if the queue is full or the log is not running or the write
        failed, and ``InvalidInput`` if the record cannot be encoded. If the caller is
        cancelled, the record is still written."""
        if (
            self._config.sample_rate < 1.0
            and isinstance(record, CaptureRecord)
            and not is_sampled(record.request_id, self._config.sample_rate)
        ):
            return False
        if not self._is_running:
            self._rejected.inc()
            raise Overloaded(f"capture log {self._name} is not running")
        # Framing (the CRC) happens on the writer thread: only the encoding stays here.
        data = encode_record(self._redactor.redact(record))
        if (
            self._num_unacked >= self._config.max_queue
            or self._unacked_bytes + len(data) + HEADER_BYTES > self._config.max_queue_bytes
        ):
            self._rejected.inc()
            raise Overloaded(f"capture log {self._name} queue is full", retry_after_s=1.0)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((data, future))
        self._num_unacked += 1
        self._unacked_bytes += len(data) + HEADER_BYTES
        self._wake.set()
        queued_s = time.perf_counter()
        await future
        self._append_seconds.observe(time.perf_counter() - queued_s)
        return True

    def should_capture(self, request_id: str) -> bool:
        """Whether a request with this id is inside the sample (so a caller can skip building
        its record)."""
        return is_sampled(request_id, self._config.sample_rate)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new appends, write everything already accepted, seal the open segment and
        release the lock. If the queue does not drain within ``timeout_s``, the writer is
        cancelled and every remaining append fails with ``Overloaded``."""
        if self._task is None:
            return
        self._is_running = False
        self._is_stopping = True
        self._wake.set()
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:
            logger.error("capture log %s: flush timed out after %.1f s", self._name, timeout_s)
            self._task.cancel()
        # Retrieves the writer's exception, if it died (already logged there).
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._writer.seal)
        self._executor.shutdown(wait=True)
        self._executor = None
        if self._lock_fd is not None:
            unlock(self._lock_fd)
            self._lock_fd = None

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._pending:
                    if self._is_stopping:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                num = min(len(self._pending), self._config.max_batch_records)
                batch = [self._pending.popleft() for _ in range(num)]
                self._in_flight = batch
                payloads = [data for data, _ in batch]
                started_s = time.perf_counter()
                try:
                    await loop.run_in_executor(self._executor, self._write_durably, payloads)
                except OSError as exc:
                    logger.error("capture log %s: write failed: %s", self._name, exc)
                    self._write_errors.inc()
                    self._in_flight = []
                    self._settle(batch, Overloaded(f"capture log write failed: {exc}"))
                    continue
                self._in_flight = []
                self._commit_seconds.observe(time.perf_counter() - started_s)
                self._fsyncs.inc()
                self._records.inc(num)
                self._settle(batch, None)
        except BaseException as exc:
            # The writer is gone: every append it owns fails, and later ones are refused.
            self._is_running = False
            if not isinstance(exc, asyncio.CancelledError):
                logger.exception("capture log %s: writer died", self._name)
            remaining = self._in_flight + list(self._pending)
            self._in_flight = []
            self._pending.clear()
            self._settle(remaining, Overloaded(f"capture log {self._name} writer stopped"))
            raise

    def _write_durably(self, payloads: list[bytes]) -> None:
        """On the writer thread: frame the payloads and commit them as one chunk."""
        self._writer.append_durably(b"".join([frame(p) for p in payloads]))

    def _settle(
        self, batch: list[tuple[bytes, asyncio.Future[None]]], error: Exception | None
    ) -> None:
        for data, future in batch:
            self._num_unacked -= 1
            self._unacked_bytes -= len(data) + HEADER_BYTES
            if future.done():  # the caller was cancelled; its record is written all the same
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


class CaptureSink:
    """The two logs of a server (requests and feedback) under one data dir, started and
    stopped together. The gateway's single handle on capture."""

    def __init__(
        self, layout: CaptureLayout, config: CaptureConfig, registry: CollectorRegistry
    ) -> None:
        metrics = CaptureMetrics(registry)
        self.layout = layout
        self._salt = config.salt
        # Callers repeat: the hash of a user's key is computed once, in a bounded cache.
        self._user_hashes: dict[str, str] = {}
        self.requests = CaptureLog(layout.requests_log, config, metrics, name="requests")
        self.feedback = CaptureLog(layout.feedback_log, config, metrics, name="feedback")

    async def start(self) -> None:
        await self.requests.start()
        try:
            await self.feedback.start()
        except BaseException:
            await self.requests.stop()
            raise

    async def append(self, record: CaptureRecord) -> bool:
        """See :meth:`CaptureLog.append` (requests log)."""
        return await self.requests.append(record)

    async def append_feedback(self, record: FeedbackRecord) -> bool:
        """See :meth:`CaptureLog.append` (feedback log; never sampled out)."""
        return await self.feedback.append(record)

    def should_capture(self, request_id: str) -> bool:
        return self.requests.should_capture(request_id)

    def hash_user_key(self, raw_key: str) -> str:
        """The installation-salted hash of a user's key, for ``user_hash``."""
        hashed = self._user_hashes.get(raw_key)
        if hashed is None:
            if len(self._user_hashes) >= _MAX_USER_HASHES:
                self._user_hashes.clear()
            hashed = self._user_hashes[raw_key] = hash_user_key(raw_key, self._salt)
        return hashed

    async def stop(self, timeout_s: float = 30.0) -> None:
        try:
            await self.requests.stop(timeout_s)
        finally:
            await self.feedback.stop(timeout_s)


def read_records(directory: Path, record_type: type[R]) -> Iterator[R]:
    """Every record in a log folder, in write order, skipping torn tails. Blocking I/O."""
    for payload in iter_payloads(directory):
        record = decode_record(payload, record_type)
        assert isinstance(record, record_type)
        yield record


def load_or_create_salt(path: Path) -> bytes:
    """The installation's salt for user-key hashes: read from ``path``, or created there once
    (32 random bytes, mode 0600). Blocking I/O; call at startup."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    make_private_dirs(path.parent)
    salt = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_bytes()
    try:
        os.write(fd, salt)
        os.fsync(fd)
    finally:
        os.close(fd)
    return salt
