"""The gateway's side of capture: turn an answered request into a record before the answer.

A 200 response is sent only after its record is durable (the local log's group commit, or
JetStream's publish acknowledgement), so an acknowledged answer is never missing from the
dataset, even after ``kill -9``. When capture cannot keep up it raises ``Overloaded`` and the
client gets 503 with Retry-After instead of an answer whose record would be lost. Error
responses are captured too, but a failure to capture them is only logged: the client already
gets an error.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from aiscale.data.capture_record import CaptureRecord, FeedbackRecord
from aiscale.errors import AiscaleError

logger = logging.getLogger(__name__)


class CaptureBackend(Protocol):
    """What the gateway needs of a sink: the local log (``CaptureSink``) or NATS JetStream."""

    async def start(self) -> None: ...

    async def stop(self, timeout_s: float = 30.0) -> None: ...

    async def append(self, record: CaptureRecord) -> bool: ...

    async def append_feedback(self, record: FeedbackRecord) -> bool: ...

    def should_capture(self, request_id: str) -> bool: ...

    def hash_user_key(self, raw_key: str) -> str: ...


class RequestCapture:
    """Builds records from the request path's values and hands them to the backend."""

    def __init__(self, backend: CaptureBackend) -> None:
        self.backend = backend

    async def record(
        self,
        *,
        request_id: str,
        deployment: str,
        version: str,
        inputs: Any,
        outputs: Any,
        latency_s: float,
        status: int,
        user_key: str | None,
        key_id: str | None = None,
        client_request_id: str | None = None,
    ) -> None:
        """Capture one request; raises only for a 200 whose record could not be made durable.
        ``request_id`` is the server's id (sampling follows it, so a client cannot choose to
        be captured or not); ``key_id`` is the caller's key, for checking feedback later."""
        if not self.backend.should_capture(request_id):
            return
        record = CaptureRecord(
            request_id=request_id,
            ts_s=time.time(),
            deployment=deployment,
            version=version,
            inputs=inputs,
            outputs=outputs,
            latency_ms=latency_s * 1000.0,
            status=status,
            user_hash=self.backend.hash_user_key(user_key) if user_key else None,
            client_request_id=client_request_id,
            key_id=key_id,
        )
        if status == 200:
            await self.backend.append(record)
            return
        try:
            await self.backend.append(record)
        except AiscaleError as exc:
            logger.warning("capture of failed request %s skipped: %s", request_id, exc)
