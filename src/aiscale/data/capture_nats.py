"""Capture for many gateways: records go to a NATS JetStream stream, one consumer lands them.

Each gateway publishes every record to the stream and answers its client only after
JetStream acknowledged the publish (the record is stored by the NATS server), so the
guarantee of the local log holds: an acknowledged answer keeps its record. The message id
is the record's key (``Nats-Msg-Id``), so a publish retried within JetStream's duplicate
window is stored once; compaction deduplicates by key as well.

A consumer (``NatsCaptureConsumer``, run by ``aiscale data consume``) pulls batches from a
durable consumer, appends them to the local capture log of one data dir (group commit, so
durable), and acknowledges them only then; a consumer killed between the two redelivers the
batch, and compaction drops the duplicates. One dataset then serves every gateway.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import nats
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter

from aiscale.data.capture import CaptureLayout, CaptureSink
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
from aiscale.errors import ConfigError, Overloaded

logger = logging.getLogger(__name__)

SUBJECT_PREFIX = "aiscale.capture"
_KIND_OF: dict[type[Any], str] = {CaptureRecord: "requests", FeedbackRecord: "feedback"}
_TYPE_OF: dict[str, type[Record]] = {"requests": CaptureRecord, "feedback": FeedbackRecord}


async def _log_nats_error(error: Exception) -> None:
    """nats-py's default prints a traceback for every failed attempt; one line says enough."""
    logger.warning("NATS: %s", error or type(error).__name__)


async def _connect(url: str) -> Any:
    try:
        return await nats.connect(
            url, connect_timeout=2, max_reconnect_attempts=3, error_cb=_log_nats_error
        )
    except (NoServersError, OSError, NatsTimeout) as exc:
        raise ConfigError(f"cannot connect to NATS at {url}: {exc}", field="nats_url") from exc


async def ensure_stream(js: Any, stream: str) -> None:
    """Create the capture stream once (file storage: records survive a NATS restart)."""
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(name=stream, subjects=[f"{SUBJECT_PREFIX}.{stream}.>"])
        )


class NatsCaptureSink:
    """The gateway's capture backend when several gateways share one dataset."""

    def __init__(
        self, url: str, stream: str, config: CaptureConfig, registry: CollectorRegistry
    ) -> None:
        self._url = url
        self._stream = stream
        self._config = config
        self._redactor = Redactor(config.redact_fields, config.redact_patterns)
        self._published = Counter(
            "aiscale_capture_published",
            "Capture records acknowledged by NATS JetStream.",
            ["log"],
            registry=registry,
        )
        self._failed = Counter(
            "aiscale_capture_publish_failures",
            "Capture records NATS JetStream did not acknowledge (the request got 503).",
            ["log"],
            registry=registry,
        )
        self._nc: Any = None
        self._js: Any = None

    async def start(self) -> None:
        self._nc = await _connect(self._url)
        self._js = self._nc.jetstream()
        await ensure_stream(self._js, self._stream)

    async def stop(self, timeout_s: float = 30.0) -> None:
        if self._nc is not None:
            try:
                await asyncio.wait_for(self._nc.drain(), timeout_s or None)
            except (TimeoutError, NatsTimeout):
                await self._nc.close()
            self._nc = None

    async def append(self, record: CaptureRecord) -> bool:
        if not self.should_capture(record.request_id):
            return False
        await self._publish(record)
        return True

    async def append_feedback(self, record: FeedbackRecord) -> bool:
        await self._publish(record)
        return True

    def should_capture(self, request_id: str) -> bool:
        return is_sampled(request_id, self._config.sample_rate)

    def hash_user_key(self, raw_key: str) -> str:
        return hash_user_key(raw_key, self._config.salt)

    async def _publish(self, record: Record) -> None:
        kind = _KIND_OF[type(record)]
        if self._js is None:
            raise Overloaded("capture to NATS is not running")
        key = record.request_id if isinstance(record, CaptureRecord) else record.feedback_id
        try:
            await self._js.publish(
                f"{SUBJECT_PREFIX}.{self._stream}.{kind}",
                encode_record(self._redactor.redact(record)),
                stream=self._stream,
                headers={"Nats-Msg-Id": f"{kind}:{key}"},
            )
        except Exception as exc:  # any NATS failure means: not stored, so no 200
            self._failed.labels(kind).inc()
            raise Overloaded(f"capture to NATS failed: {exc}", retry_after_s=1.0) from exc
        self._published.labels(kind).inc()


@dataclass(frozen=True, slots=True)
class ConsumeReport:
    requests: int
    feedback: int


class NatsCaptureConsumer:
    """Lands the stream's records in one data dir's capture log, acknowledging only durable ones."""

    def __init__(
        self,
        url: str,
        stream: str,
        layout: CaptureLayout,
        *,
        durable: str = "aiscale-landing",
        batch: int = 1000,
    ) -> None:
        self._url = url
        self._stream = stream
        self._layout = layout
        self._durable = durable
        self._batch = batch

    async def run(self, *, idle_s: float = 1.0, max_s: float | None = None) -> ConsumeReport:
        """Consume until the stream has been idle for ``idle_s`` (or ``max_s`` has passed)."""
        nc = await _connect(self._url)
        sink = CaptureSink(self._layout, CaptureConfig(), CollectorRegistry())
        counts = {"requests": 0, "feedback": 0}
        loop = asyncio.get_running_loop()
        deadline = None if max_s is None else loop.time() + max_s
        try:
            js = nc.jetstream()
            await ensure_stream(js, self._stream)
            subscription = await js.pull_subscribe(
                f"{SUBJECT_PREFIX}.{self._stream}.>", durable=self._durable, stream=self._stream
            )
            await sink.start()
            while deadline is None or loop.time() < deadline:
                try:
                    messages = await subscription.fetch(self._batch, timeout=idle_s)
                except (TimeoutError, NatsTimeout):
                    # nats-py raises either, depending on where the wait ran out.
                    break
                await self._land(sink, messages, counts)
        finally:
            await sink.stop()
            await nc.close()
        return ConsumeReport(counts["requests"], counts["feedback"])

    async def _land(self, sink: CaptureSink, messages: list[Any], counts: dict[str, int]) -> None:
        appends = []
        for message in messages:
            kind = message.subject.rsplit(".", 1)[-1]
            record_type = _TYPE_OF.get(kind)
            if record_type is None:
                logger.warning("skipping capture message on unknown subject %s", message.subject)
                continue
            record = decode_record(message.data, record_type)
            if isinstance(record, CaptureRecord):
                appends.append(sink.append(record))
            else:
                appends.append(sink.append_feedback(record))
            counts[kind] += 1
        # All appends of a batch share one group commit; ack only after it is durable.
        await asyncio.gather(*appends)
        await asyncio.gather(*(message.ack() for message in messages))
