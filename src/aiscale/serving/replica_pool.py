"""Local replica processes of one model version: start, route to, replace, scale and drain.

The pool owns the processes and one reader task per replica. It never forms batches (the
batcher does) and never decides status codes. A replica that dies fails every batch it held
with ``ReplicaUnavailable`` naming the cause, and is replaced while the wanted count says so.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import pickle
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiscale.errors import AiscaleError, ModelLoadError, ReplicaError, ReplicaUnavailable
from aiscale.serving.ipc import (
    HEADER_SIZE,
    BatchReply,
    BatchRequest,
    LoadFailedMessage,
    ReadyMessage,
    StopMessage,
    decode_length,
    encode,
)
from aiscale.serving.pool import least_loaded_free, removal_victims, serving_replicas

logger = logging.getLogger(__name__)


#: libgomp busy-wait iterations before a waiting thread sleeps (default 300,000).
OPENMP_SPIN_COUNT = 10_000

#: Runtimes whose model config takes ``num_threads``; others get the thread count by environment.
THREADED_RUNTIMES = frozenset({"minilm", "sentence-transformers", "onnx"})


def replica_settings(
    runtime: str, config: Mapping[str, Any], num_threads: int, env: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The model config a replica runs with (``num_threads`` unless the config names its own)
    and the environment variables to set for it on top of ``env``, the environment of the
    process that will run it: one function for local replicas, Ray actors (which get only
    these variables, on whichever node runs them) and ``aiscale profile``."""
    config = dict(config)
    num_threads = int(config.get("num_threads") or num_threads)
    if runtime in THREADED_RUNTIMES:
        config.setdefault("num_threads", num_threads)
    # Read by torch/OpenMP/BLAS at import in the replica, for runtimes without the knob too.
    extra = {"OMP_NUM_THREADS": str(num_threads)}
    # OpenMP workers that spin for long (libgomp's default) collapse throughput as soon as
    # another process (the gateway, a load generator) needs a core: minilm at batch 64 on
    # 2 cores beside one busy process fell from ~180 to 125 sentences/s. A short spin keeps
    # the quiet-machine speed and sleeps when a peer thread is preempted.
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        extra["GOMP_SPINCOUNT"] = str(OPENMP_SPIN_COUNT)
    for name, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        if name not in env:
            extra[name] = value
    return config, extra


def replica_environment(
    runtime: str, config: Mapping[str, Any], num_threads: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """The model config and the whole process environment of a replica started from this
    process (``replica_settings`` over ``os.environ``)."""
    config, extra = replica_settings(runtime, config, num_threads, os.environ)
    return config, {**os.environ, **extra}


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """What every replica of this pool loads, and how it is run."""

    runtime: str
    uri: str
    config: dict[str, Any] = field(default_factory=dict)
    #: Batches sent to one replica before its answer; 1 keeps batches large, 2 overlaps I/O.
    max_inflight_batches: int = 1
    startup_timeout_s: float = 120.0
    #: torch/OpenMP threads per replica; ``None`` splits the machine's cores over the replicas.
    num_threads: int | None = None


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


@dataclass(slots=True)
class _InflightBatch:
    future: asyncio.Future[BatchReply]
    num_items: int


@dataclass(slots=True, eq=False)
class Replica:
    """One running replica process as the gateway sees it."""

    replica_id: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    schema: dict[str, Any]
    load_s: float
    inflight: dict[int, _InflightBatch] = field(default_factory=dict)
    num_inflight_items: int = 0
    is_draining: bool = False
    is_dead: bool = False
    #: Per-replica resources (GPU devices), released when the replica ends.
    lease: ReplicaLease | None = None

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def node(self) -> str:
        return "local"


class LocalReplicaPool:
    """Replica processes on this machine for one model version.

    ``on_change`` is called (no arguments) whenever the number of ready replicas changes, so
    the owner can export it as a metric.
    """

    def __init__(
        self,
        spec: ReplicaSpec,
        *,
        on_change: Callable[[], None] | None = None,
        on_started: Callable[[float], None] | None = None,
        resources: ReplicaResources | None = None,
    ) -> None:
        self.spec = spec
        self._resources = resources
        self._on_change = on_change or (lambda: None)
        self._on_started = on_started or (lambda _seconds: None)
        self._replicas: list[Replica] = []
        self._num_starting = 0
        self._wanted = 0
        self._batch_ids = itertools.count()
        self._replica_ids = itertools.count()
        self._capacity = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._is_stopping = False
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

    def replicas(self) -> list[Replica]:
        return list(self._replicas)

    # ----- lifecycle -------------------------------------------------------------------
    async def start(self, num_replicas: int) -> None:
        """Start ``num_replicas``; return when all are ready (``ModelLoadError`` if one fails)."""
        self._wanted = num_replicas
        await asyncio.gather(*(self._start_one() for _ in range(num_replicas)))

    async def scale(self, num_replicas: int, *, drain_timeout_s: float = 30.0) -> None:
        """Change the replica count without failing a request.

        New replicas take traffic only once loaded; removed ones stop taking batches at once
        and exit after their in-flight batches are answered.
        """
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

    # ----- dispatch --------------------------------------------------------------------
    async def acquire(self) -> Replica:
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

    def send(self, replica: Replica, items: list[Any]) -> asyncio.Future[BatchReply]:
        """Hand a batch to ``replica``; the future resolves with its reply or fails if it dies."""
        if replica.is_dead:
            raise ReplicaUnavailable(f"replica {replica.replica_id} is gone")
        batch_id = next(self._batch_ids)
        future: asyncio.Future[BatchReply] = asyncio.get_running_loop().create_future()
        replica.inflight[batch_id] = _InflightBatch(future, len(items))
        replica.num_inflight_items += len(items)
        replica.writer.write(encode(BatchRequest(batch_id, items)))
        return future

    # ----- internals -------------------------------------------------------------------
    def _threads_per_replica(self) -> int:
        if self.spec.num_threads:
            return self.spec.num_threads
        return max(1, (os.cpu_count() or 1) // max(1, self._wanted))

    async def _start_one(self) -> Replica:
        self._num_starting += 1
        try:
            try:
                lease = await self._resources.acquire() if self._resources else None
            except BaseException:
                # Refused (or gave up waiting): this replica will not exist.
                self._wanted = max(0, self._wanted - 1)
                raise
            started = time.monotonic()
            try:
                replica = await self._spawn(lease)
            except BaseException:
                if lease is not None:
                    lease.release()
                raise
        finally:
            self._num_starting -= 1
        self.last_start_s = time.monotonic() - started
        self._on_started(self.last_start_s)
        if self._is_stopping or self.num_ready >= self._wanted:
            # Scaled down (or stopping) while it loaded: it is not wanted any more.
            self._replicas.append(replica)
            await self._drain_and_stop(replica, 1.0)
            return replica
        self._replicas.append(replica)
        task = asyncio.create_task(
            self._read_replies(replica), name=f"replica-{replica.replica_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info(
            "replica %d (pid %d) of %s ready in %.2fs",
            replica.replica_id,
            replica.pid,
            self.spec.uri,
            time.monotonic() - started,
        )
        self._capacity.set()
        self._on_change()
        if replica.lease is not None:
            replica.lease.serving()
        return replica

    async def _spawn(self, lease: ReplicaLease | None = None) -> Replica:
        parent, child = socket.socketpair()
        config, env = replica_environment(
            self.spec.runtime, self.spec.config, self._threads_per_replica()
        )
        if lease is not None:
            env.update(lease.env)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "aiscale.serving.replica",
                "--fd",
                str(child.fileno()),
                "--runtime",
                self.spec.runtime,
                "--uri",
                self.spec.uri,
                "--config",
                json.dumps(config),
                pass_fds=(child.fileno(),),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent, limit=1 << 24)
        try:
            first = await asyncio.wait_for(_read_message(reader), self.spec.startup_timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            process.kill()
            await process.wait()
            writer.close()
            raise ModelLoadError(
                f"replica for {self.spec.uri} did not become ready "
                f"(exit code {process.returncode}): {type(exc).__name__}"
            ) from exc
        if isinstance(first, LoadFailedMessage):
            await process.wait()
            writer.close()
            raise ModelLoadError(f"{first.type_name}: {first.message}")
        if not isinstance(first, ReadyMessage):
            process.kill()
            raise ModelLoadError(f"replica sent {type(first).__name__} before ready")
        self.schema = first.schema
        return Replica(
            next(self._replica_ids), process, writer, reader, first.schema, first.load_s,
            lease=lease,
        )

    async def _read_replies(self, replica: Replica) -> None:
        """Resolve each batch's future; on EOF, fail what is left and replace the replica."""
        try:
            while True:
                message = await _read_message(replica.reader)
                if not isinstance(message, BatchReply):
                    continue
                batch = replica.inflight.pop(message.batch_id, None)
                if batch is None:
                    continue
                replica.num_inflight_items -= batch.num_items
                if not batch.future.done():
                    batch.future.set_result(message)
                self._capacity.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            self._fail_inflight(replica, "the server is shutting down")
            raise
        except Exception:  # a task boundary: log, then treat the replica as dead
            logger.exception("reader of replica %d failed", replica.replica_id)
        await self._handle_exit(replica)

    async def _handle_exit(self, replica: Replica) -> None:
        was_expected = replica.is_draining
        replica.is_dead = True
        if replica in self._replicas:
            self._replicas.remove(replica)
        try:
            code = await asyncio.wait_for(replica.process.wait(), 5.0)
        except TimeoutError:
            replica.process.kill()
            code = await replica.process.wait()
        cause = f"replica {replica.replica_id} (pid {replica.pid}) exited with code {code}"
        self._fail_inflight(replica, cause)
        replica.writer.close()
        if replica.lease is not None:
            replica.lease.release()
        self._on_change()
        self._capacity.set()
        if was_expected or self._is_stopping:
            return
        logger.error("%s while serving; replacing it", cause)
        if self.num_ready + self._num_starting < self._wanted:
            self.num_replaced += 1
            try:
                await self._start_one()
            except AiscaleError:  # a model that will not load, or no GPU for it
                logger.exception("replacement of replica %d failed", replica.replica_id)

    def _fail_inflight(self, replica: Replica, cause: str) -> None:
        for batch in replica.inflight.values():
            if not batch.future.done():
                batch.future.set_exception(ReplicaUnavailable(cause))
        replica.inflight.clear()
        replica.num_inflight_items = 0

    async def _drain_and_stop(self, replica: Replica, drain_timeout_s: float) -> None:
        replica.is_draining = True
        self._on_change()
        deadline = time.monotonic() + drain_timeout_s
        pending = [b.future for b in replica.inflight.values()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        if replica.process.returncode is None:
            try:
                replica.writer.write(encode(StopMessage()))
                await asyncio.wait_for(
                    replica.process.wait(), max(0.5, deadline - time.monotonic())
                )
            except (TimeoutError, ConnectionError):
                replica.process.kill()
                await replica.process.wait()
        if replica in self._replicas:
            self._replicas.remove(replica)
        self._fail_inflight(replica, f"replica {replica.replica_id} was stopped")
        replica.writer.close()
        if replica.lease is not None:
            replica.lease.release()


async def _read_message(reader: asyncio.StreamReader) -> object:
    header = await reader.readexactly(HEADER_SIZE)
    body = await reader.readexactly(decode_length(header))
    return pickle.loads(body)


def reply_outputs(reply: BatchReply) -> Any:
    """The outputs of a reply, or the model's error raised as ``ReplicaError``."""
    if reply.error_type is not None:
        raise ReplicaError(reply.error_type, reply.error_message or "")
    return reply.outputs
