"""OpenTelemetry tracing: a request's ``traceparent`` is honoured and continued through the
queue, the batch, the replica's model call and capture; with tracing off nothing of
OpenTelemetry is loaded.

Spans are received the way a collector receives them: a real OTLP/HTTP endpoint on loopback
(``ThreadingHTTPServer`` on port 0) that decodes each protobuf post.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aiscale.config import load_config
from aiscale.errors import ConfigError
from aiscale.replicas.tracing import TraceExport
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from aiscale.serving.tracing import RequestTracing
from tests.polling import wait_for
from tests.serving.conftest import python_spec
from tests.serving.test_capture_served import local_capture, text_body

pytest.importorskip("opentelemetry.sdk", reason="tracing tests need the aiscale[otel] extra")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    component: str
    links: tuple[str, ...]


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint on loopback that keeps every span posted to it."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver._record(self.path, body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _record(self, path: str, body: bytes) -> None:
        assert path == "/v1/traces", path
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ReceivedSpan(
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            attributes.get("aiscale.component", ""),
                            tuple(link.span_id.hex() for link in span.links),
                        )
                    )
        with self._lock:
            self.spans.extend(found)

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver()
    yield found
    found.close()


def test_traceparent_is_continued_through_queue_batch_model_and_capture(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """One request with a ``traceparent``: its request, queue, batch, capture spans (gateway)
    and model span (replica process) all carry its trace id, each under the right parent."""
    registry = CollectorRegistry()
    gateway = Gateway(
        GatewaySettings(drain_timeout_s=5.0),
        [python_spec("echo", "Echo")],
        metrics_registry=registry,
        capture=local_capture(tmp_path)(registry),
        tracing=RequestTracing(TraceExport(endpoint=receiver.url)),
    )
    server = start_in_thread(GatewayApp(gateway))
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    try:
        response = httpx.post(
            f"{server.url}/v2/models/echo/infer",
            json=text_body("hello"),
            headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
        )
        assert response.status_code == 200, response.text
        untraced = httpx.post(f"{server.url}/v2/models/echo/infer", json=text_body("other"))
        assert untraced.status_code == 200
    finally:
        server.stop()  # flushes the gateway's spans; the replica flushes as it exits
    names = {f"aiscale.{part}" for part in ("request", "queue", "batch", "model", "capture")}

    def all_five() -> list[ReceivedSpan]:
        found = receiver.of_trace(trace_id)
        return found if names <= {span.name for span in found} else []

    spans = wait_for(all_five, 10.0, "all five spans of the traced request")
    by_name = {span.name: span for span in spans}
    assert sorted(span.name for span in spans) == sorted(names)
    request = by_name["aiscale.request"]
    assert request.parent_span_id == caller_span
    for child in ("aiscale.queue", "aiscale.batch", "aiscale.capture"):
        assert by_name[child].parent_span_id == request.span_id, child
        assert by_name[child].component == "gateway"
    model = by_name["aiscale.model"]
    assert model.parent_span_id == by_name["aiscale.batch"].span_id
    assert model.component == "replica"  # opened in the replica process
    # The request without a traceparent got a trace of its own, not the caller's.
    others = {span.trace_id for span in receiver.spans if span.name == "aiscale.request"}
    assert len(others) == 2


def test_tracing_config_from_file_environment_and_flag() -> None:
    """``AISCALE_OTEL_ENDPOINT`` sets ``server.tracing.endpoint``, a flag overrides it, and a
    bad endpoint is refused with its dotted path."""
    assert not load_config(environ={}).server.tracing.is_enabled
    from_env = load_config(environ={"AISCALE_OTEL_ENDPOINT": "http://collector:4318"})
    assert from_env.server.tracing.endpoint == "http://collector:4318"
    flagged = load_config(
        environ={"AISCALE_OTEL_ENDPOINT": "http://collector:4318"},
        server_overrides={"tracing": {"endpoint": "http://other:4318/v1/traces"}},
    )
    assert flagged.server.tracing.endpoint == "http://other:4318/v1/traces"
    assert TraceExport(endpoint="http://collector:4318/").traces_url == (
        "http://collector:4318/v1/traces"
    )
    with pytest.raises(ConfigError) as raised:
        load_config(environ={"AISCALE_OTEL_ENDPOINT": "collector:4318"})
    assert raised.value.field == "server.tracing.endpoint"


_GATEWAY_SCRIPT = """
import sys, httpx
from prometheus_client import CollectorRegistry
from aiscale.config import load_config
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from aiscale.serving.launch import build_tracing
from tests.serving.conftest import python_spec

config = load_config(environ=dict(arg.split("=", 1) for arg in sys.argv[1:]))
gateway = Gateway(
    GatewaySettings(drain_timeout_s=5.0),
    [python_spec("echo", "Echo")],
    metrics_registry=CollectorRegistry(),
    tracing=build_tracing(config.server),
)
server = start_in_thread(GatewayApp(gateway))
body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
answer = httpx.post(server.url + "/v2/models/echo/infer", json=body)
server.stop()
assert answer.status_code == 200, answer.text
print(sorted({name.split(".")[0] for name in sys.modules if name.startswith("opentelemetry")}))
"""


def _loaded_by_gateway(*environ: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _GATEWAY_SCRIPT, *environ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_tracing_off_imports_no_opentelemetry(receiver: OtlpReceiver) -> None:
    """A gateway with tracing off serves without loading any OpenTelemetry module; the same
    gateway with an endpoint configured does load it (so the check can see it)."""
    assert _loaded_by_gateway() == "[]"
    assert _loaded_by_gateway(f"AISCALE_OTEL_ENDPOINT={receiver.url}") == "['opentelemetry']"
    assert {span.name for span in receiver.spans} == {"aiscale.request", "aiscale.queue",
                                                      "aiscale.batch", "aiscale.model"}
