"""One streamed chat completion, timed token by token, with as little client CPU as possible.

``ChatStreamClient.stream(body, ...)`` POSTs a pre-encoded ``stream: true`` body to an
OpenAI-compatible ``/v1/chat/completions`` and reads the server-sent events as they come. The
load generator shares a small machine with the server it measures, so the per-chunk work is
kept to a few byte searches: the socket is read in whole network reads (``iter_any``), one
``perf_counter`` per read, and only the usage event (once per request), an error event, or,
for conversations that need the answer's text, each content event is JSON-decoded. A chunk
counts as a token arrival when its delta carries non-empty ``content``.

Outcomes, never exceptions, describe failures: a non-2xx status, a connection that could not
be opened or broke, no byte for ``timeout_s`` (``timeout``), an error event inside the stream
or a stream that ended before ``data: [DONE]`` (``stream``).
"""

from __future__ import annotations

import json
import re
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

__all__ = ["ChatStreamClient", "StreamOutcome"]

_CONTENT = re.compile(rb'"content":\s*"[^"]')
_USAGE = re.compile(rb'"usage":\s*\{')
_MAX_ERROR_TEXT = 300


@dataclass(slots=True)
class StreamOutcome:
    """What one streamed request did. Times are ``perf_counter`` seconds.

    ``error`` is None on success, else ``"<status>"``, ``"connection"``, ``"timeout"`` or
    ``"stream"``, with ``error_text`` saying more. ``token_times_s`` holds the arrival time of
    every chunk with content (the first is the first token). ``usage`` is the server's usage
    object when it sent one. ``text`` is the assembled answer when it was asked for.
    """

    started_s: float
    error: str | None = None
    error_text: str = ""
    token_times_s: array[float] = field(default_factory=lambda: array("d"))
    usage: dict[str, Any] | None = None
    text: str = ""
    finish_reason: str | None = None
    ended_s: float = 0.0

    @property
    def completion_tokens(self) -> int:
        """Output tokens: the server's count when it sent usage, else the content chunks."""
        if self.usage is not None:
            value = self.usage.get("completion_tokens")
            if isinstance(value, int):
                return value
        return len(self.token_times_s)

    @property
    def prompt_tokens(self) -> int | None:
        value = None if self.usage is None else self.usage.get("prompt_tokens")
        return value if isinstance(value, int) else None

    @property
    def cached_tokens(self) -> int | None:
        details = None if self.usage is None else self.usage.get("prompt_tokens_details")
        value = details.get("cached_tokens") if isinstance(details, dict) else None
        return value if isinstance(value, int) else None


class ChatStreamClient:
    """Streams chat completions from one URL over one aiohttp session (kept-alive connections).

    ``max_connections`` bounds the connections (and so the streams) open at once;
    ``timeout_s`` bounds connecting and every wait for the next bytes, not the whole stream,
    whose length the caller chose with ``max_tokens``. Must be made inside a running loop.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Sequence[tuple[str, str]],
        max_connections: int,
        timeout_s: float,
    ) -> None:
        self._url = URL(url)
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            **dict(headers),
        }
        connector = aiohttp.TCPConnector(
            limit=max_connections, keepalive_timeout=60.0, ttl_dns_cache=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s),
            skip_auto_headers=("User-Agent",),
        )

    async def stream(self, body: bytes, *, started_s: float, keep_text: bool) -> StreamOutcome:
        """Send ``body`` and read its event stream to the end; never raises for a failure.

        ``started_s`` is when the request counts as started (its scheduled time in an open
        loop). ``keep_text`` assembles the answer's text (for conversations).
        """
        outcome = StreamOutcome(started_s)
        for attempt in range(2):
            has_response = False
            try:
                async with self._session.post(
                    self._url, data=body, headers=self._headers, allow_redirects=False
                ) as response:
                    has_response = True
                    if response.status != 200:
                        text = await response.text(errors="replace")
                        outcome.error = str(response.status)
                        outcome.error_text = text[:_MAX_ERROR_TEXT]
                    elif not await _read_events(response, outcome, keep_text):
                        outcome.error = outcome.error or "stream"
                        outcome.error_text = outcome.error_text or "stream ended before [DONE]"
            except aiohttp.ClientConnectorError as exc:
                outcome.error, outcome.error_text = "connection", f"cannot connect: {exc}"
            except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                outcome.error, outcome.error_text = "timeout", f"no data in time: {exc}"
            except (aiohttp.ClientError, OSError) as exc:
                if not has_response and attempt == 0:
                    # A kept-alive connection the server closed as we reused it (llama.cpp's
                    # server closes after every streamed answer although it says keep-alive):
                    # nothing reached the server, so send once more on a fresh connection.
                    continue
                outcome.error, outcome.error_text = "connection", f"{type(exc).__name__}: {exc}"
            break
        outcome.ended_s = time.perf_counter()
        return outcome

    async def close(self) -> None:
        await self._session.close()


async def _read_events(
    response: aiohttp.ClientResponse, outcome: StreamOutcome, keep_text: bool
) -> bool:
    """Read the stream into ``outcome``; True when ``[DONE]`` (or its end after a finished
    choice) arrived, False when it was cut short or carried an error event."""
    clock = time.perf_counter
    times = outcome.token_times_s
    pieces: list[str] = []
    pending = b""
    is_done = False
    async for data in response.content.iter_any():
        now = clock()
        if pending:
            data = pending + data
        lines = data.split(b"\n")
        pending = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, comments (": ping"), "event:" lines
            payload = line[5:].strip()
            if payload == b"[DONE]":
                is_done = True
                continue
            if _CONTENT.search(payload):
                times.append(now)
                if keep_text:
                    pieces.append(_delta_text(payload))
            if b'"finish_reason":"' in payload or b'"finish_reason": "' in payload:
                outcome.finish_reason = _finish_reason(payload)
            if _USAGE.search(payload):
                usage = json.loads(payload).get("usage")
                if isinstance(usage, dict):
                    outcome.usage = usage
            elif b'"error"' in payload and b'"choices"' not in payload:
                outcome.error = "stream"
                outcome.error_text = payload.decode(errors="replace")[:_MAX_ERROR_TEXT]
                return False
    outcome.text = "".join(pieces)
    # A server that closes the stream without [DONE] after a finish reason still finished.
    return is_done or outcome.finish_reason is not None


def _delta_text(payload: bytes) -> str:
    try:
        choices = json.loads(payload).get("choices") or ()
        return "".join(str((c.get("delta") or {}).get("content") or "") for c in choices)
    except (ValueError, AttributeError):
        return ""


def _finish_reason(payload: bytes) -> str | None:
    try:
        for choice in json.loads(payload).get("choices") or ():
            reason = choice.get("finish_reason")
            if reason:
                return str(reason)
    except (ValueError, AttributeError):
        pass
    return None
