"""Messages between the gateway and its replica processes, and their framing.

Every message is a frozen dataclass, pickled (protocol 5) behind a 4-byte big-endian length.
Pickle is safe here because both ends are our own processes connected by a private socket
pair. This module must never import the web framework or model code.
"""

from __future__ import annotations

import pickle
import socket
import struct
from dataclasses import dataclass
from typing import Any

_HEADER = struct.Struct(">I")
#: Refuse frames above this size: a corrupt length must not make us allocate gigabytes.
MAX_FRAME_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class ReadyMessage:
    """Sent once by a replica after ``load()``: it is ready for batches."""

    pid: int
    schema: dict[str, Any]
    load_s: float


@dataclass(frozen=True, slots=True)
class LoadFailedMessage:
    """Sent instead of ``ReadyMessage`` when the model could not be loaded."""

    type_name: str
    message: str


@dataclass(frozen=True, slots=True)
class BatchRequest:
    batch_id: int
    items: list[Any]
    #: The W3C ``traceparent`` of the gateway's batch span when tracing is on: the replica
    #: opens its model span under it (``replicas/tracing.py``). ``None``: not traced.
    trace_context: str | None = None


@dataclass(frozen=True, slots=True)
class BatchReply:
    """Outputs of one batch, or the error that failed all of it (type name kept, MLServer-style)."""

    batch_id: int
    outputs: Any = None
    error_type: str | None = None
    error_message: str | None = None
    model_s: float = 0.0


@dataclass(frozen=True, slots=True)
class StopMessage:
    """Asks a replica to finish the batch at hand and exit."""


def encode(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=5)
    return _HEADER.pack(len(payload)) + payload


def decode_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes exceeds the limit")
    return int(length)


HEADER_SIZE = _HEADER.size


def recv_message(sock: socket.socket) -> object | None:
    """Blocking read of one message (replica side); ``None`` when the peer closed."""
    header = _recv_exactly(sock, HEADER_SIZE)
    if header is None:
        return None
    body = _recv_exactly(sock, decode_length(header))
    if body is None:
        return None
    message: object = pickle.loads(body)
    return message


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            return None
        received += count
    return bytes(buffer)
