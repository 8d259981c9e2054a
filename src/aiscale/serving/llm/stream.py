"""Server-sent events from an engine, relayed to the client event by event, and tallied.

``SseRelay.feed`` takes bytes as they arrive from the engine and returns the complete events to
send on at once: nothing waits for more than the rest of its own event, so the client sees each
token when the engine sends it (no buffering proxy in between). While relaying it assembles the
output text, the finish reason and the usage, and times the first token (TTFT) and the gaps
between tokens (ITL) for the metrics and the capture record.

The gateway always asks the engine for usage (``stream_options.include_usage``); the usage-only
chunk is passed on only to a client that asked for it. The engine's ``data: [DONE]`` is held
back: the gateway sends its own once the request's capture record is durable, so a client that
saw the end of a stream may count on it being in the dataset. Pure bookkeeping over bytes: no
I/O, and time comes from the injected ``clock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["DONE_EVENT", "SSE_HEADERS", "SseRelay", "StreamTally", "error_event"]

DONE_EVENT = b"data: [DONE]\n\n"
#: Headers of every streamed answer: no cache and no proxy buffering (nginx honours
#: ``X-Accel-Buffering``), so tokens reach the client as they are made.
SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
#: An event larger than this without its end is not an SSE stream we can relay.
MAX_EVENT_BYTES = 4 * 1024 * 1024


def error_event(message: str, type_name: str, code: str | None = None) -> bytes:
    """An error inside a stream, as OpenAI's SDK reads it (it raises ``APIError``)."""
    body = {"error": {"message": message, "type": type_name, "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


@dataclass(slots=True)
class StreamTally:
    """What a relayed stream said so far."""

    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    #: The engine's usage object (``prompt_tokens``, ``completion_tokens``, details).
    usage: dict[str, Any] | None = None
    #: Chunks that carried output text (about one token each).
    num_token_chunks: int = 0
    #: Seconds from the request's start (``started_s``) to the first output text.
    ttft_s: float | None = None
    #: Sum of the gaps between output chunks (seconds), and how many gaps.
    itl_sum_s: float = 0.0
    num_gaps: int = 0
    #: The engine's own error event, when it sent one.
    error: dict[str, Any] | None = None
    is_done: bool = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def mean_itl_s(self) -> float | None:
        return self.itl_sum_s / self.num_gaps if self.num_gaps else None


class SseRelay:
    """Splits an engine's SSE bytes into events; passes on all but ``[DONE]`` (and the
    usage-only chunk unless ``include_usage``), tallying as it goes.

    ``kind`` is ``chat`` (text in ``choices[0].delta.content``) or ``completion``
    (``choices[0].text``). ``on_gap`` gets each inter-token gap in seconds (a histogram).
    """

    def __init__(
        self,
        kind: str,
        *,
        include_usage: bool,
        started_s: float,
        clock: Callable[[], float] = time.perf_counter,
        on_gap: Callable[[float], None] | None = None,
    ) -> None:
        self._is_chat = kind == "chat"
        self._include_usage = include_usage
        self._started_s = started_s
        self._clock = clock
        self._on_gap = on_gap
        self._pending = b""
        self._last_token_s: float | None = None
        self.tally = StreamTally()

    def feed(self, data: bytes) -> bytes:
        """The complete events in ``pending + data`` to send on now (possibly ``b""``);
        an incomplete tail waits for the next call. Raises ``ValueError`` for an event over
        ``MAX_EVENT_BYTES``."""
        if b"\r" in data:  # CRLF framing (some upstreams): one framing to split on
            data = data.replace(b"\r\n", b"\n")
        buffer = self._pending + data if self._pending else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            if len(buffer) > MAX_EVENT_BYTES:
                raise ValueError("an engine event exceeded the size limit")
            self._pending = buffer
            return b""
        self._pending = buffer[end + 2 :]
        complete = buffer[: end + 2]
        if complete.count(b"\n\n") == 1:  # the usual case: one event, forwarded as it came
            return self._pass_on(complete[:-2], complete)
        return b"".join(
            self._pass_on(event, event + b"\n\n") for event in complete[:-2].split(b"\n\n")
        )

    def _pass_on(self, event: bytes, framed: bytes) -> bytes:
        """Tally one event (``framed`` is it with its blank line); what to pass on of it."""
        data = _data_of(event)
        if data is None:
            if event.startswith(b"error:"):  # llama.cpp's error event: as OpenAI's SDK reads it
                payload = event[6:].strip()
                self.tally.error = _error_of(payload)
                return b'data: {"error":' + payload + b"}\n\n" if payload else b""
            return framed if event.strip() else b""  # a comment or keep-alive
        if data == b"[DONE]":
            self.tally.is_done = True
            return b""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return framed  # not ours to judge; the client's SDK will say
        if not isinstance(chunk, dict):
            return framed
        if chunk.get("error") is not None:
            error = chunk["error"]
            self.tally.error = error if isinstance(error, dict) else {"message": str(error)}
            return framed
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.tally.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return framed if usage is None or self._include_usage else b""
        self._count_choice(choices[0])
        return framed

    def _count_choice(self, choice: Any) -> None:
        if not isinstance(choice, dict):
            return
        if self._is_chat:
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = choice.get("text")
        reason = choice.get("finish_reason")
        if reason is not None:
            self.tally.finish_reason = str(reason)
        if not isinstance(text, str) or not text:
            return
        tally = self.tally
        tally.parts.append(text)
        tally.num_token_chunks += 1
        now = self._clock()
        if self._last_token_s is None:
            tally.ttft_s = now - self._started_s
        else:
            gap = now - self._last_token_s
            tally.itl_sum_s += gap
            tally.num_gaps += 1
            if self._on_gap is not None:
                self._on_gap(gap)
        self._last_token_s = now


def _data_of(event: bytes) -> bytes | None:
    """The payload of an event's ``data:`` line(s); ``None`` for an event without one."""
    if event.startswith(b"data:") and b"\n" not in event:
        return event[5:].strip()
    lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _error_of(payload: bytes) -> dict[str, Any]:
    try:
        error = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {"message": payload.decode("utf-8", "replace")}
    return error if isinstance(error, dict) else {"message": str(error)}
