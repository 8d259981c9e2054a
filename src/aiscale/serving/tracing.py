"""OpenTelemetry spans of the gateway: request, queue, batch and capture, and their propagation.

A request's ``traceparent`` header is honoured (its span becomes the parent of ours) and the
trace continues into the replica: each batch's span context travels with the batch
(``BatchRequest.trace_context``) and the replica opens the model span under it
(``replicas/tracing.py``). The spans of one request::

    aiscale.request       SERVER; the incoming traceparent is its parent
      aiscale.queue       enqueued -> its batch is sent (one per item run in a batch)
      aiscale.batch       sent -> reply; parent: its first traced item, links to the others
        aiscale.model     in the replica process: predict() of the batch
      aiscale.capture     waiting until the capture record is durable

Everything here is built only when tracing is configured (``server.tracing``,
``--otel-endpoint``, ``AISCALE_OTEL_ENDPOINT``). With tracing off the gateway holds ``None``
instead of a ``RequestTracing`` and the hooks in ``app.py`` and ``batcher.py`` cost one
``is None`` test; no OpenTelemetry module is imported. This module never exports on the
event loop: spans go to a ``BatchSpanProcessor`` queue and its thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from aiscale.replicas.ipc import BatchReply
from aiscale.replicas.tracing import TraceExport, build_provider
from aiscale.serving.http import Receive, Scope, Send

#: Paths not traced: probes and scrapes would bury the requests in their own spans.
_UNTRACED_PREFIXES = ("/v2/health/", "/metrics")

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestTracing:
    """The gateway's tracer; one per server process, shut down (flushed) with the gateway."""

    def __init__(self, export: TraceExport) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.export = export
        self._context = context
        self._trace = trace
        self._provider = build_provider(export, component="gateway")
        self._tracer = self._provider.get_tracer("aiscale.serving")
        self._propagator = TraceContextTextMapPropagator()

    async def serve_http(
        self, scope: Scope, receive: Receive, send: Send, handler: Handler
    ) -> None:
        """Run ``handler`` inside the request's span, the child of its ``traceparent``."""
        path = scope["path"]
        if path.startswith(_UNTRACED_PREFIXES):
            await handler(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        parent = self._propagator.extract(carrier)
        method = scope["method"]
        with self._tracer.start_as_current_span(
            "aiscale.request",
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:

            async def send_traced(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
                await send(message)

            await handler(scope, receive, send_traced)

    @contextmanager
    def capture_span(self) -> Iterator[None]:
        """The span of waiting for a capture record to be durable (inside the request's)."""
        with self._tracer.start_as_current_span("aiscale.capture"):
            yield

    def for_lane(self, deployment: str, version: str) -> LaneTracing:
        """The batcher's hooks for one model version's lane."""
        return LaneTracing(self, {"aiscale.deployment": deployment, "aiscale.version": version})

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter thread (blocking: call off the loop)."""
        self._provider.shutdown()

    # ----- used by LaneTracing -----------------------------------------------------------
    def _start_batch(
        self,
        contexts: Sequence[object | None],
        enqueued_s: Sequence[float],
        sent_s: float,
        attributes: dict[str, Any],
    ) -> tuple[Any, str | None]:
        trace = self._trace
        # Spans take wall-clock nanoseconds; the batcher measures on the monotonic clock.
        wall_ns, now_s = time.time_ns(), time.monotonic()

        def wall(monotonic_s: float) -> int:
            return wall_ns - int((now_s - monotonic_s) * 1e9)

        sent_ns = wall(sent_s)
        parent: Any = None
        links = []
        for context, enqueued in zip(contexts, enqueued_s, strict=True):
            if context is None:
                continue
            queued = self._tracer.start_span(
                "aiscale.queue", context=context, start_time=wall(enqueued), attributes=attributes
            )
            queued.end(end_time=sent_ns)
            if parent is None:
                parent = context
            else:
                links.append(trace.Link(trace.get_current_span(context).get_span_context()))
        batch = self._tracer.start_span(
            "aiscale.batch",
            context=parent,
            links=links,
            start_time=sent_ns,
            attributes={**attributes, "aiscale.batch.size": len(contexts)},
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(batch))
        return batch, carrier.get("traceparent")

    def _finish_batch(self, span: Any, done: asyncio.Future[BatchReply] | None) -> None:
        trace = self._trace
        if done is None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "replica lost before the send"))
        elif done.cancelled():
            span.set_status(trace.Status(trace.StatusCode.ERROR, "cancelled"))
        elif (error := done.exception()) is not None:
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}"))
        else:
            reply = done.result()
            if reply.error_type is not None:
                message = f"{reply.error_type}: {reply.error_message}"
                span.set_status(trace.Status(trace.StatusCode.ERROR, message))
        span.end()


class LaneTracing:
    """What the batcher calls when tracing is on (it holds ``None`` otherwise)."""

    __slots__ = ("_attributes", "_tracing")

    def __init__(self, tracing: RequestTracing, attributes: dict[str, Any]) -> None:
        self._tracing = tracing
        self._attributes = attributes

    def current(self) -> object:
        """The caller's trace context (its request span), taken when an item is queued."""
        return self._tracing._context.get_current()

    def start_batch(
        self, contexts: Sequence[object | None], enqueued_s: Sequence[float], sent_s: float
    ) -> tuple[Any, str | None]:
        """End each item's queue span at ``sent_s`` and open the batch span; returns the span
        and its ``traceparent`` for the replica. Times are ``time.monotonic()`` seconds."""
        return self._tracing._start_batch(contexts, enqueued_s, sent_s, self._attributes)

    def finish_batch(self, span: Any, done: asyncio.Future[BatchReply] | None) -> None:
        """End the batch span with the outcome of its reply (a model or replica error fails
        it); ``done`` is ``None`` when the batch never left (its replica died first)."""
        self._tracing._finish_batch(span, done)
