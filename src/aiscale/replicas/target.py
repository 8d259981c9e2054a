"""What the pool's users see of it: the batcher a ``BatchTarget``, the admin API ``ReplicaHandle``s.

``ReplicaPool`` (``pool.py``) implements both. The batcher types against these protocols
only, so it neither knows nor imports the pool, its backends or Ray. This module must never
import an implementation or the web framework.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, TypeVar

from aiscale.errors import ReplicaError
from aiscale.replicas.ipc import BatchReply


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

    ``send`` returns a future that resolves with the replica's ``BatchReply`` (read it with
    ``reply_outputs``), or fails with ``ReplicaUnavailable`` naming the cause when the replica
    is lost with the batch on it (the batcher then retries the batch up to ``max_retries``
    times). ``send`` itself raises ``ReplicaUnavailable`` when the replica died after
    ``acquire`` chose it.
    """

    @property
    def num_ready(self) -> int: ...

    @property
    def num_starting(self) -> int: ...

    async def acquire(self) -> ReplicaT: ...

    def has_free_slot(self) -> bool: ...

    def send(
        self, replica: ReplicaT, items: list[Any], trace_context: str | None = None
    ) -> asyncio.Future[BatchReply]: ...


def reply_outputs(reply: BatchReply) -> Any:
    """The outputs of a reply, or the model's error raised as ``ReplicaError``."""
    if reply.error_type is not None:
        raise ReplicaError(reply.error_type, reply.error_message or "")
    return reply.outputs
