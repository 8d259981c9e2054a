"""A streamed completion on its way from an engine to the client: ``LlmStream``.

The app sends the response head (``headers``), then runs ``pump(send)`` while it watches for
the client leaving (``disconnect.py``), then always calls ``aclose()``. ``pump`` relays the
engine's events as they arrive (``stream.py``) and ends the stream in one of three ways:

* the engine finished: the request is finished (settled, captured durably), then the
  gateway's own ``data: [DONE]`` goes out, so a client that saw ``[DONE]`` may count on its
  record;
* the engine failed or vanished before the first token: the request goes to another replica
  (a clean retry: the client has seen no output yet); after the first token, or with no
  replica left, the client gets an error event and then ``[DONE]``, never a hang (each
  read from the engine has a deadline, the lane's ``timeout_s``);
* the client left (the pump is cancelled): the engine's connection is closed, which makes
  the engine cancel the generation and free its slot, and the request is settled with the
  tokens streamed so far.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from aiscale.errors import AiscaleError, ReplicaUnavailable
from aiscale.serving.errors import status_for
from aiscale.serving.http import Send
from aiscale.serving.llm.call import CLIENT_CLOSED, LlmCall, Outcome
from aiscale.serving.llm.stream import DONE_EVENT, SSE_HEADERS, SseRelay, error_event

__all__ = ["LlmStream"]

logger = logging.getLogger(__name__)

Reopen = Callable[[LlmCall], Awaitable[httpx.Response]]
Finish = Callable[[LlmCall, Outcome, int], Awaitable[None]]


class LlmStream:
    """One streamed answer: the engine's open response and the request it belongs to."""

    def __init__(
        self, call: LlmCall, response: httpx.Response, *, reopen: Reopen, finish: Finish
    ) -> None:
        self.call = call
        self._response: httpx.Response | None = response
        self._reopen = reopen
        self._finish = finish
        self._is_pumping = False

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response head: SSE, no caching or proxy buffering, the serving version."""
        return [*SSE_HEADERS, (b"x-aiscale-version", self.call.lane.version.encode())]

    async def pump(self, send: Send) -> None:
        """Relay the engine's events to ``send`` until the stream ends (see the module
        docstring). Cancelled when the client leaves."""
        self._is_pumping = True
        call = self.call
        relay = self._new_relay()
        failure: AiscaleError | None = None
        try:
            while True:
                try:
                    await self._relay(relay, send)
                    break
                except (httpx.HTTPError, ReplicaUnavailable, ValueError) as exc:
                    await self._close_response()
                    call.leave_replica()
                    reason = _reason(exc)
                    if relay.tally.num_token_chunks or relay.tally.error is not None:
                        failure = ReplicaUnavailable(f"the engine failed mid-stream: {reason}")
                        break
                    logger.warning(
                        "engine failed before the first token of %s (%s); trying another",
                        call.request.request_id,
                        reason,
                        extra={"request_id": call.request.request_id},
                    )
                    try:
                        self._response = await self._reopen(call)
                    except AiscaleError as again:
                        failure = again
                        break
                    relay = self._new_relay(relay)
            self._take(relay)
            outcome: Outcome = "failed"
            if failure is None and relay.tally.error is not None:
                status = 502  # the engine's own error event was passed on as it came
            elif failure is None:
                outcome, status = "ok", 200
            else:
                outcome, status = "failed", status_for(failure)
                await send(_body(error_event(failure.message, "server_error",
                                             type(failure).__name__)))
            try:
                await self._finish(call, outcome, status)
            except AiscaleError as exc:  # the record could not be made durable: no [DONE]
                await send(_body(error_event(exc.message, "server_error", type(exc).__name__)))
            await send({"type": "http.response.body", "body": DONE_EVENT, "more_body": False})
        except asyncio.CancelledError:  # the client left: ``aclose`` finishes it so
            self._take(relay)
            raise
        except Exception:
            self._take(relay)
            await self._finish_quietly("failed", 500)
            raise
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the engine's stream (the engine cancels a generation nobody reads) and
        finish the request if ``pump`` did not: as cancelled by the client."""
        await self._close_response()
        if not self.call.is_finished:
            await self._finish_quietly("cancelled", CLIENT_CLOSED)

    # ----- internals ------------------------------------------------------------------
    def _new_relay(self, previous: SseRelay | None = None) -> SseRelay:
        call = self.call
        metrics = call.lane.llm_metrics.itl_seconds.labels(*call.labels_of_view())
        relay = SseRelay(
            call.checked.kind,
            include_usage=call.checked.include_usage,
            started_s=call.started_s,
            on_gap=metrics.observe,
        )
        if previous is not None:  # a retry: what the client was sent so far stays counted
            relay.tally.parts.extend(previous.tally.parts)
        return relay

    async def _relay(self, relay: SseRelay, send: Send) -> None:
        response = self._response
        assert response is not None
        async for raw in response.aiter_raw():
            out = relay.feed(raw)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
        if not relay.tally.is_done and relay.tally.finish_reason is None:
            raise ReplicaUnavailable("the engine closed the stream before its end")

    def _take(self, relay: SseRelay) -> None:
        """Copy what the relay tallied into the request (for the ledger and the capture)."""
        tally, call = relay.tally, self.call
        call.text = tally.text
        call.finish_reason = tally.finish_reason
        call.usage = tally.usage
        call.num_token_chunks = tally.num_token_chunks
        call.ttft_s = tally.ttft_s
        call.itl_s = tally.mean_itl_s

    async def _close_response(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            await response.aclose()

    async def _finish_quietly(self, outcome: Outcome, status: int) -> None:
        try:
            await self._finish(self.call, outcome, status)
        except AiscaleError as exc:
            logger.warning("finishing LLM request %s: %s", self.call.request.request_id, exc)


def _body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, AiscaleError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
