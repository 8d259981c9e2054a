"""OpenTelemetry tracing shared by the gateway and its replica processes: export and model spans.

``TraceExport`` says where spans go (an OTLP/HTTP collector, the console, or both); it crosses
to a replica process on its command line, and ``build_provider`` turns it into a tracer
provider on either side. ``ModelSpans`` opens the ``aiscale.model`` span of one batch in the
replica process, as the child of the batch span whose W3C ``traceparent`` travelled with the
``BatchRequest``. It lives in ``replicas/`` because the replica process may import nothing
above this part; ``serving/tracing.py`` builds the gateway's spans on it.

OpenTelemetry is an optional extra (``aiscale[otel]``): this module imports it only inside
``build_provider`` and ``ModelSpans``, which are used only when tracing is configured, so a
server with tracing off never loads it. Exporting never blocks a batch: spans are handed to a
``BatchSpanProcessor`` (a bounded queue and its own thread) and flushed on ``shutdown``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiscale.errors import ConfigError
from aiscale.replicas.ipc import BatchReply

#: The path an OTLP/HTTP collector takes traces on (appended to a base endpoint).
OTLP_TRACES_PATH = "/v1/traces"


@dataclass(frozen=True, slots=True)
class TraceExport:
    """Where spans go. At least one of ``endpoint`` and ``is_console`` is set.

    ``endpoint`` is an OTLP/HTTP collector: its base URL (``http://collector:4318``, to which
    ``/v1/traces`` is added) or the full traces URL. ``is_console`` prints spans as JSON on
    stdout. ``sample_ratio`` is the share of new traces recorded; a request that arrives with
    a sampled ``traceparent`` is always recorded (parent-based sampling).
    """

    endpoint: str | None = None
    is_console: bool = False
    service_name: str = "aiscale"
    sample_ratio: float = 1.0

    @property
    def traces_url(self) -> str | None:
        if self.endpoint is None:
            return None
        base = self.endpoint.rstrip("/")
        return base if base.endswith(OTLP_TRACES_PATH) else base + OTLP_TRACES_PATH

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TraceExport:
        return cls(**json.loads(text))


def build_provider(export: TraceExport, *, component: str) -> Any:
    """A ``TracerProvider`` exporting to ``export``; ``component`` names the process kind
    (``gateway``, ``replica``). Raises ``ConfigError`` when the extra is not installed."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ConfigError(
            "tracing needs the OpenTelemetry packages: pip install 'aiscale[otel]'",
            field="tracing",
        ) from None
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": export.service_name, "aiscale.component": component}
        ),
        sampler=ParentBased(TraceIdRatioBased(export.sample_ratio)),
    )
    url = export.traces_url
    if url is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    if export.is_console:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


class ModelSpans:
    """The replica process's tracer: one ``aiscale.model`` span per traced batch."""

    def __init__(self, export: TraceExport, *, runtime: str, uri: str) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = build_provider(export, component="replica")
        self._tracer = self._provider.get_tracer("aiscale.replicas")
        self._propagator = TraceContextTextMapPropagator()
        self._attributes = {"aiscale.runtime": runtime, "aiscale.model.uri": uri}

    def run(
        self, traceparent: str, num_items: int, predict: Callable[[], BatchReply]
    ) -> BatchReply:
        """Call ``predict`` inside a model span, the child of the batch span ``traceparent``;
        a reply carrying an error marks the span as failed."""
        from opentelemetry.trace import Status, StatusCode

        parent = self._propagator.extract({"traceparent": traceparent})
        with self._tracer.start_as_current_span(
            "aiscale.model",
            context=parent,
            attributes={**self._attributes, "aiscale.batch.size": num_items},
        ) as span:
            reply = predict()
            if reply.error_type is not None:
                span.set_status(
                    Status(StatusCode.ERROR, f"{reply.error_type}: {reply.error_message}")
                )
            return reply

    def shutdown(self) -> None:
        """Export what is still buffered; called once as the replica exits."""
        self._provider.shutdown()
