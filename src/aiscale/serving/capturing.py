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


def completion_values(
    *,
    messages: Any,
    prompt: str | None,
    params: dict[str, Any],
    text: str,
    finish_reason: str | None,
    usage: dict[str, int],
    ttft_s: float | None,
    itl_s: float | None,
    is_streamed: bool,
    outcome: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``inputs`` and ``outputs`` of a chat or completion request's record.

    ``inputs``: ``{"messages": [...]}`` (chat) or ``{"prompt": ...}`` with the sampling
    ``params`` (``max_tokens`` included). ``outputs``: the full assembled ``text`` (of a
    streamed answer too, and of a cancelled one as far as it got), ``finish_reason``,
    ``usage`` (``prompt_tokens``, ``cached_tokens``, ``completion_tokens``), ``ttft_ms`` and
    mean ``itl_ms`` (``None`` where not measured), ``is_streamed`` and ``outcome``
    (``ok``, ``cancelled`` by the client, or ``failed``). One dict each, so the dataset
    tools see one example per request (``data/examples.py``); ``aiscale data export
    --format chat`` turns them into fine-tuning conversations."""
    inputs: dict[str, Any] = {"messages": messages} if messages is not None else {"prompt": prompt}
    inputs["params"] = params
    outputs = {
        "text": text,
        "finish_reason": finish_reason,
        "usage": usage,
        "ttft_ms": None if ttft_s is None else ttft_s * 1000.0,
        "itl_ms": None if itl_s is None else itl_s * 1000.0,
        "is_streamed": is_streamed,
        "outcome": outcome,
    }
    return inputs, outputs


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
