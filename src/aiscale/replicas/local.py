"""Replicas as processes on this machine, each over a private socket pair: the default backend.

``LocalProcessBackend`` starts ``python -m aiscale.replicas.process`` with one end of a socket
pair as an inherited file descriptor, writes each batch to it as a ``BatchRequest``, and reads
``BatchReply`` messages back in ``wait_dead``, which the pool runs for the replica's whole life:
it resolves each batch's future as its reply arrives and returns, with the exit code, when the
socket closes. Everything else (counts, choice, draining, failing and retrying batches,
replacement) is ``ReplicaPool``'s. This module never runs model code and never decides status
codes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pickle
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from aiscale.errors import ModelLoadError, ReplicaUnavailable
from aiscale.replicas.backend import ReplicaInfo, ReplicaLease, ReplicaSpec
from aiscale.replicas.environment import replica_environment
from aiscale.replicas.ipc import (
    HEADER_SIZE,
    BatchReply,
    BatchRequest,
    LoadFailedMessage,
    ReadyMessage,
    StopMessage,
    decode_length,
    encode,
)

#: How long a replica whose socket closed is given to exit before it is killed (for its code).
EXIT_TIMEOUT_S = 5.0
#: Read buffer of the socket to a replica: large enough for a batch of embeddings in one go.
READ_LIMIT_BYTES = 1 << 24


@dataclass(slots=True, eq=False)
class LocalProcess:
    """One replica process: its end of the socket pair and the replies it still owes."""

    replica_id: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    replies: dict[int, asyncio.Future[BatchReply]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return int(self.process.pid)


class LocalProcessBackend:
    """Replica processes on this machine for one model version (a ``ReplicaBackend``)."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self._batch_ids = itertools.count()

    async def spawn(
        self, replica_id: int, *, num_replicas: int, lease: ReplicaLease | None
    ) -> tuple[LocalProcess, ReplicaInfo]:
        """Start a replica process and wait for its ``ReadyMessage`` (``ModelLoadError`` if
        it reports a failed load, exits, or stays silent past ``startup_timeout_s``)."""
        spec = self.spec
        # Unless the spec says, the replicas share the machine's cores evenly.
        num_threads = spec.num_threads or max(1, (os.cpu_count() or 1) // max(1, num_replicas))
        config, env = replica_environment(spec.runtime, spec.config, num_threads)
        if lease is not None:
            env.update(lease.env)
        tracing = () if spec.tracing is None else ("--tracing", spec.tracing.to_json())
        parent, child = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "aiscale.replicas.process",
                "--fd",
                str(child.fileno()),
                "--runtime",
                spec.runtime,
                "--uri",
                spec.uri,
                "--config",
                json.dumps(config),
                *tracing,
                pass_fds=(child.fileno(),),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent, limit=READ_LIMIT_BYTES)
        handle = LocalProcess(replica_id, process, reader, writer)
        try:
            first = await asyncio.wait_for(_read_message(reader), spec.startup_timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.stop(handle, 0.0)
            raise ModelLoadError(
                f"replica for {spec.uri} did not become ready "
                f"(exit code {process.returncode}): {type(exc).__name__}"
            ) from exc
        except BaseException:  # cancelled while it loaded: leave nothing running
            _kill(process)
            writer.close()
            raise
        if isinstance(first, LoadFailedMessage):
            # The replica exits by itself once it has reported the failure.
            await self.stop(handle, EXIT_TIMEOUT_S)
            raise ModelLoadError(f"{first.type_name}: {first.message}")
        if not isinstance(first, ReadyMessage):
            await self.stop(handle, 0.0)
            raise ModelLoadError(f"replica sent {type(first).__name__} before ready")
        return handle, ReplicaInfo(handle.pid, "local", first.schema, first.load_s)

    def send(
        self, handle: LocalProcess, items: list[Any], trace_context: str | None = None
    ) -> asyncio.Future[BatchReply]:
        """Write the batch to the replica's socket; ``wait_dead`` resolves the future."""
        if handle.writer.is_closing():
            raise ReplicaUnavailable(f"replica {handle.replica_id} (pid {handle.pid}) is gone")
        batch_id = next(self._batch_ids)
        future: asyncio.Future[BatchReply] = asyncio.get_running_loop().create_future()
        handle.replies[batch_id] = future
        handle.writer.write(encode(BatchRequest(batch_id, items, trace_context)))
        return future

    async def stop(self, handle: LocalProcess, timeout_s: float) -> None:
        """Send ``StopMessage`` (the replica answers the batches before it first, then exits)
        and kill it after ``timeout_s``; then close the socket. Safe on an ended replica."""
        process = handle.process
        if process.returncode is None:
            try:
                if not handle.writer.is_closing():
                    handle.writer.write(encode(StopMessage()))
                await asyncio.wait_for(process.wait(), timeout_s)
            except (TimeoutError, ConnectionError):
                _kill(process)
                await process.wait()
        handle.writer.close()

    async def wait_dead(self, handle: LocalProcess) -> str:
        """Read replies until the socket closes, then wait for the exit code (killing the
        process after ``EXIT_TIMEOUT_S`` if it lingers) and report it."""
        try:
            while True:
                message = await _read_message(handle.reader)
                if not isinstance(message, BatchReply):
                    continue
                future = handle.replies.pop(message.batch_id, None)
                if future is not None and not future.done():
                    future.set_result(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        try:
            code = await asyncio.wait_for(handle.process.wait(), EXIT_TIMEOUT_S)
        except TimeoutError:
            _kill(handle.process)
            code = await handle.process.wait()
        return f"replica {handle.replica_id} (pid {handle.pid}) exited with code {code}"


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:  # exited since the check
            pass


async def _read_message(reader: asyncio.StreamReader) -> object:
    header = await reader.readexactly(HEADER_SIZE)
    body = await reader.readexactly(decode_length(header))
    return pickle.loads(body)
