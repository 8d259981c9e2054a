"""The gateway as a plain ASGI app: routing, body limits, auth, and the protocol endpoints.

A hand-written ASGI callable rather than a framework router: the hot path is the product,
and each request here costs a dict lookup and a few function calls before the batcher.
Every domain error becomes a JSON error body through ``serving/errors.py``; anything
unexpected is logged with the request id and answered with a 500 JSON body.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aiscale.dashboard import DashboardAssets
from aiscale.errors import (
    AiscaleError,
    Conflict,
    Forbidden,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    ReplicaUnavailable,
)
from aiscale.serving import feedback, oip_v2, oip_v2_extensions, openai_api, openapi
from aiscale.serving.admin import AdminApi
from aiscale.serving.auth import Caller
from aiscale.serving.deployment import Deployment
from aiscale.serving.errors import (
    render_error,
    render_internal_error,
    shape_for_path,
    status_for,
)
from aiscale.serving.gateway import Gateway
from aiscale.serving.http import Receive, Request, Response, Scope, Send
from aiscale.serving.lane import VersionLane
from aiscale.serving.limits import check_item_count
from aiscale.serving.llm.api import LlmApi
from aiscale.serving.llm.disconnect import ClientDisconnected, until_disconnect
from aiscale.serving.llm.lane import LlmLane
from aiscale.serving.llm.relay import LlmStream
from aiscale.serving.origin import RequestGuard
from aiscale.serving.request_ids import RequestIds

logger = logging.getLogger(__name__)

_JSON = (b"content-type", b"application/json")
#: A body above this size is parsed in a worker thread, so that its parse (milliseconds per
#: megabyte) never holds the event loop that answers health checks and other requests.
PARSE_OFF_LOOP_BYTES = 64 * 1024
#: Bodies parsed in worker threads at once: parsing is CPU-bound under the GIL, so more
#: threads would only hold more decoded bodies in memory at the same time.
MAX_PARSING_THREADS = 2
_T = TypeVar("_T")


def _json(status: int, payload: Any) -> Response:
    return status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), [_JSON]


class GatewayApp:
    """ASGI entry point; ``gateway`` holds all state, this class only speaks HTTP."""

    def __init__(self, gateway: Gateway, *, on_ready: Callable[[], None] | None = None) -> None:
        self.gateway = gateway
        self.admin = AdminApi(gateway)
        self.dashboard = DashboardAssets()
        #: Host, Origin and Content-Type checks against cross-site and rebinding calls.
        self.guard = RequestGuard(gateway.settings.allowed_hosts, gateway.settings.cors_origins)
        #: The server's request ids, each carrying which key it was issued to.
        self.request_ids = RequestIds(gateway.settings.request_id_key)
        self._on_ready = on_ready
        self._request_counters: dict[tuple[str, str, int], Any] = {}
        self._request_seconds: dict[tuple[str, str], Any] = {}
        #: Worker threads parsing large bodies at once (``_parse``).
        self._parsing = asyncio.Semaphore(MAX_PARSING_THREADS)
        #: ``/v1/chat/completions`` and ``/v1/completions`` (``serving/llm/``).
        self.llm = LlmApi(gateway, parse=self._parse, capture=self._capture, count=self._count)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            tracing = self.gateway.tracing
            if tracing is None:
                await self._http(scope, receive, send)
            else:  # the request's span, the child of its traceparent (serving/tracing.py)
                await tracing.serve_http(scope, receive, send, self._http)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except AiscaleError as exc:  # a known cause: one line, no traceback
                    logger.error("gateway failed to start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                except Exception as exc:  # startup boundary: report and refuse to start
                    logger.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
                if self._on_ready is not None:
                    self._on_ready()
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.gateway.settings
        request = Request(scope, receive, settings.max_body_bytes, settings.body_timeout_s)
        try:
            answer = self.guard.check(scope, request.headers)
            routed = (
                answer
                if answer is not None
                else await self._route(request, scope["method"], scope["path"])
            )
            if isinstance(routed, LlmStream):
                await self._stream(request, scope, routed, send)
                return
            status, body, headers = routed
        except ClientDisconnected:
            return  # nobody is left to answer; the request was finished as cancelled
        except AiscaleError as exc:
            status, body, headers = render_error(exc, shape_for_path(scope["path"]))
            headers.append(_JSON)
        except Exception:  # the request boundary: log with context, answer 500 JSON
            logger.exception("unhandled error", extra={"request_id": request.request_id})
            status, body, headers = render_internal_error(shape_for_path(scope["path"]))
            headers.append(_JSON)
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"x-request-id", request.request_id.encode()))
        if request.client_request_id is not None:
            headers.append((b"x-client-request-id", request.client_request_id.encode("latin-1")))
        if status == 408:  # the rest of a slow body is not worth waiting for
            headers.append((b"connection", b"close"))
        headers.extend(self.guard.cors_headers(scope["path"], request.headers))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(
        self, request: Request, scope: Scope, stream: LlmStream, send: Send
    ) -> None:
        """Send a streamed answer: the head at once, then the events as the engine makes
        them, until the end or until the client leaves (then the engine is told)."""
        headers = stream.headers
        headers.append((b"x-request-id", request.request_id.encode()))
        if request.client_request_id is not None:
            headers.append((b"x-client-request-id", request.client_request_id.encode("latin-1")))
        headers.extend(self.guard.cors_headers(scope["path"], request.headers))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await until_disconnect(request.receive, stream.pump(send))
        except ClientDisconnected:
            pass
        except Exception:  # the head is out: no error status can follow, only the log
            logger.exception("streaming failed", extra={"request_id": request.request_id})
        finally:
            await stream.aclose()

    async def _route(self, request: Request, method: str, path: str) -> Response | LlmStream:
        parts = path.strip("/").split("/")
        head = parts[0]
        if head == "v2":
            return await self._v2(request, method, parts[1:])
        if head == "v1":
            return await self._v1(request, method, parts[1:])
        if path == "/metrics":
            _expect(method, "GET")
            if self.gateway.settings.is_metrics_key_required:
                self.gateway.keyring.authenticate(request.header(b"authorization"), "metrics")
            return (
                200,
                generate_latest(self.gateway.metrics_registry),
                [(b"content-type", CONTENT_TYPE_LATEST.encode())],
            )
        if head == "dashboard":
            # The static page needs no key; its script sends the admin key to /admin/...
            return await self.dashboard.handle(
                method, parts[1:], request.header(b"accept-encoding")
            )
        if path in ("/openapi.json", "/docs"):  # what every route takes and answers
            _expect(method, "GET")
            settings = self.gateway.settings
            if path == "/docs":
                page = openapi.docs_html(settings.server_name, settings.server_version)
                return 200, page, [(b"content-type", b"text/html; charset=utf-8")]
            document = openapi.document_json(settings.server_name, settings.server_version)
            return 200, document, [_JSON]
        if head == "admin":
            caller = self.gateway.keyring.authenticate(request.header(b"authorization"), "admin")
            del caller
            return await self.admin.handle(request, method, parts[1:])
        raise NotFound(f"no endpoint at {path}", field="path")

    # ----- OIP v2 ------------------------------------------------------------------------
    async def _v2(self, request: Request, method: str, parts: list[str]) -> Response:
        if parts == ["health", "live"]:
            _expect(method, "GET")
            return _json(200, {"live": True})
        if parts == ["health", "ready"]:
            _expect(method, "GET")
            is_ready = (
                self.gateway.is_ready
                and not self.gateway.is_draining
                and all(d.is_ready for d in self.gateway.deployments.values())
            )
            return _json(200 if is_ready else 503, {"ready": is_ready})
        caller = self.gateway.keyring.authenticate(request.header(b"authorization"), "inference")
        request.request_id = self.request_ids.issue(caller.key_id)
        if not parts or parts == [""]:
            _expect(method, "GET")
            return _json(
                200,
                {
                    "name": self.gateway.settings.server_name,
                    "version": self.gateway.settings.server_version,
                    "extensions": ["binary_tensor_data"],
                    # "none" while the server runs open (serving/auth.py), else "api_key".
                    "auth": "none" if self.gateway.keyring.is_open else "api_key",
                },
            )
        if parts == ["repository", "index"]:  # Triton's model repository extension
            _expect(method, "POST")
            wanted = oip_v2_extensions.parse_repository_index_request(await request.body())
            deployments = self.gateway.deployments.values()
            return _json(200, oip_v2_extensions.repository_index(deployments, wanted))
        if parts == ["models", "stats"]:  # Triton's statistics extension, every model
            _expect(method, "GET")
            return _json(200, oip_v2_extensions.model_stats(self.gateway.deployments.values()))
        if parts[0] != "models" or len(parts) < 2:
            raise NotFound(f"no endpoint at /v2/{'/'.join(parts)}", field="path")
        name, rest = parts[1], parts[2:]
        version: str | None = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        deployment = self.gateway.requested_deployment(name)
        if version is not None:
            deployment.lane(version)  # 404 for a version this deployment does not serve
        if not rest:
            _expect(method, "GET")
            lane = deployment.lane(version) if version else deployment.primary
            schema = lane.schema
            return _json(
                200,
                {
                    "name": name,
                    "versions": sorted(deployment.lanes),
                    "platform": f"aiscale-{lane.spec.runtime}",
                    "inputs": schema.to_json()["inputs"] if schema else [],
                    "outputs": schema.to_json()["outputs"] if schema else [],
                },
            )
        if rest == ["ready"]:
            _expect(method, "GET")
            is_ready = deployment.lane(version).is_ready if version else deployment.is_ready
            return _json(200 if is_ready else 503, {"name": name, "ready": is_ready})
        if rest == ["config"]:  # Triton's model configuration extension
            _expect(method, "GET")
            lane = deployment.lane(version) if version else deployment.primary
            return _json(200, oip_v2_extensions.model_config(deployment, lane))
        if rest == ["stats"]:
            _expect(method, "GET")
            return _json(200, oip_v2_extensions.model_stats([deployment], version))
        if rest == ["infer"]:
            _expect(method, "POST")
            forced = version or request.header(b"x-aiscale-version")
            lane = deployment.route(request.header(b"x-user-id"), forced)
            if isinstance(lane, LlmLane):
                raise InvalidInput(
                    f"{name!r} is an LLM deployment: use /v1/chat/completions or "
                    "/v1/completions",
                    field="model",
                )
            return await self._infer_v2(request, deployment, lane, caller)
        raise NotFound(f"no endpoint at /v2/{'/'.join(parts)}", field="path")

    async def _infer_v2(
        self, request: Request, deployment: Deployment, lane: VersionLane, caller: Caller
    ) -> Response:
        started = time.perf_counter()
        status = 500
        inputs: Any = None
        outputs: Any = None
        user_key = request.header(b"x-user-id")
        key_id: str | None = None
        try:
            key_id = caller.key_id
            user_key = user_key or caller.key_id
            if self.gateway.shedding:
                self.gateway.check_priority(deployment.name, request.header(b"x-aiscale-priority"))
            body = await request.body()
            schema = _schema_of(lane)
            length = request.header(b"inference-header-content-length")
            if length is not None and not length.isdigit():
                raise InvalidInput(
                    "Inference-Header-Content-Length must be an integer", field="headers"
                )
            parsed = await self._parse(
                body,
                functools.partial(
                    oip_v2.parse_infer_request,
                    body,
                    int(length) if length else None,
                    schema,
                    max_items=self._max_items(lane),
                ),
            )
            if caller.rate_limit_per_s is not None:  # counted in items, known only now
                await self.gateway.admit(caller, len(parsed.items))
            inputs = parsed.items
            outputs = await lane.infer(parsed.items)
            deployment.mirror(lane, parsed.items, outputs)
            payload, header_length = oip_v2.render_infer_response(
                deployment.name,
                lane.version,
                parsed.request_id,
                outputs,
                schema,
                is_binary_output=parsed.is_binary_output,
            )
            headers = [
                (
                    b"content-type",
                    b"application/octet-stream" if header_length else b"application/json",
                ),
                (b"x-aiscale-version", lane.version.encode()),
            ]
            if header_length is not None:
                headers.append((b"inference-header-content-length", str(header_length).encode()))
            status = 200
            await self._capture(request, deployment.name, lane, inputs, outputs, status, started,
                                user_key, key_id)
            return status, payload, headers
        except AiscaleError as exc:
            status = status_for(exc)
            await self._capture(request, deployment.name, lane, inputs, None, status, started,
                                user_key, key_id)
            raise
        finally:
            self._count(deployment.name, lane, status, started)

    async def _parse(self, body: bytes, parse: Callable[[], _T]) -> _T:
        """``parse()`` (pure) on the loop for a small body, in a worker thread for a large one."""
        if len(body) <= PARSE_OFF_LOOP_BYTES:
            return parse()
        async with self._parsing:
            return await anyio.to_thread.run_sync(parse)

    def _max_items(self, lane: VersionLane) -> int:
        """Items one request may carry to ``lane``: the server's cap, within its queue bound."""
        return min(self.gateway.settings.max_items_per_request, lane.spec.batching.max_queue)

    # ----- OpenAI ------------------------------------------------------------------------
    async def _v1(self, request: Request, method: str, parts: list[str]) -> Response | LlmStream:
        if parts == ["feedback"]:  # an admin key may label any request (inference scope or not)
            _expect(method, "POST")
            return await self._feedback(request, self._feedback_caller(request))
        caller = self.gateway.keyring.authenticate(request.header(b"authorization"), "inference")
        request.request_id = self.request_ids.issue(caller.key_id)
        if parts == ["chat", "completions"]:
            _expect(method, "POST")
            return await self.llm.handle(request, caller, "chat")
        if parts == ["completions"]:
            _expect(method, "POST")
            return await self.llm.handle(request, caller, "completion")
        if parts == ["models"]:  # every deployment: LLMs and the others
            _expect(method, "GET")
            return _json(
                200,
                {
                    "object": "list",
                    "data": [
                        openai_api.model_object(d) for d in self.gateway.deployments.values()
                    ],
                },
            )
        if len(parts) == 2 and parts[0] == "models":  # OpenAI's Model object; 404 if unknown
            _expect(method, "GET")
            return _json(
                200, openai_api.model_object(self.gateway.requested_deployment(parts[1]))
            )
        if parts == ["embeddings"]:
            _expect(method, "POST")
            return await self._embeddings(request, caller)
        raise NotFound(f"no endpoint at /v1/{'/'.join(parts)}", field="path")

    async def _embeddings(self, request: Request, caller: Any) -> Response:
        started = time.perf_counter()
        status = 500
        name = ""
        lane: VersionLane | None = None
        texts: list[str] | None = None
        user_key: str | None = request.header(b"x-user-id") or caller.key_id
        try:
            body = await request.body()
            parsed = await self._parse(
                body,
                functools.partial(
                    openai_api.parse_embeddings_request,
                    body,
                    max_items=self.gateway.settings.max_items_per_request,
                ),
            )
            if caller.rate_limit_per_s is not None:  # counted in items, known only now
                await self.gateway.admit(caller, len(parsed.texts))
            deployment = self.gateway.requested_deployment(parsed.model)
            name = deployment.name
            if self.gateway.shedding:
                self.gateway.check_priority(name, request.header(b"x-aiscale-priority"))
            user_key = request.header(b"x-user-id") or parsed.user or caller.key_id
            lane = deployment.route(user_key, request.header(b"x-aiscale-version"))
            if isinstance(lane, LlmLane):
                raise InvalidInput(
                    f"deployment {name!r} is an LLM; it does not produce embeddings",
                    field="model",
                )
            check_item_count(len(parsed.texts), self._max_items(lane), "input")
            schema = _schema_of(lane)
            if not _is_text_embedding(schema):
                raise InvalidInput(
                    f"deployment {name!r} does not produce embeddings from text", field="model"
                )
            dimensions = schema.outputs[0].shape[0]
            if parsed.dimensions is not None and parsed.dimensions != dimensions:
                raise InvalidInput(f"{name!r} gives {dimensions} dimensions", field="dimensions")
            texts = parsed.texts
            outputs = await lane.infer(parsed.texts)
            deployment.mirror(lane, parsed.texts, outputs)
            payload = openai_api.render_embeddings_response(
                name,
                outputs,
                is_base64=parsed.is_base64,
                num_tokens=openai_api.count_tokens(parsed.texts),
            )
            status = 200
            await self._capture(
                request, name, lane, texts, outputs, status, started, user_key, caller.key_id
            )
            return status, payload, [_JSON, (b"x-aiscale-version", lane.version.encode())]
        except AiscaleError as exc:
            status = status_for(exc)
            if lane is not None:
                await self._capture(
                    request, name, lane, texts, None, status, started, user_key, caller.key_id
                )
            raise
        finally:
            if lane is not None:
                self._count(name, lane, status, started)

    async def _feedback(self, request: Request, caller: Any) -> Response:
        capture = self.gateway.capture
        if capture is None:
            raise Conflict("feedback needs capture, which is off on this server", field="capture")
        if caller.rate_limit_per_s is not None:
            await self.gateway.admit(caller)
        user_key = request.header(b"x-user-id") or caller.key_id
        may_label_any = "admin" in caller.scopes  # an admin key, or anyone in open mode
        # Open mode gives the anonymous caller every scope, but its labels are not an
        # admin's: ``data retrain --label-source admin`` must not take them.
        is_admin = may_label_any and not self.gateway.keyring.is_open
        record = feedback.parse_feedback(
            await request.body(),
            feedback_id=uuid.uuid4().hex,
            user_hash=capture.backend.hash_user_key(user_key) if user_key else None,
            key_id=caller.key_id,
            is_admin=is_admin,
        )
        # Only the key a request was issued to, or an admin, may label it: otherwise anyone
        # could steer what the next retraining learns.
        if not may_label_any and not self.request_ids.is_owned_by(
            record.request_id, caller.key_id
        ):
            raise Forbidden(
                "feedback is accepted only from the key that made the request, or an admin key",
                field="request_id",
            )
        await capture.backend.append_feedback(record)
        if record.score is not None:  # the canary analysis compares versions on it too
            for deployment in self.gateway.deployments.values():
                if any(
                    lane.record_feedback(record.request_id, record.score)
                    for lane in deployment.lanes.values()
                ):
                    break
        return _json(
            200,
            {"feedback_id": record.feedback_id, "request_id": record.request_id, "recorded": True},
        )

    def _feedback_caller(self, request: Request) -> Any:
        """The caller of ``/v1/feedback``: a key with the admin or the inference scope."""
        authorization = request.header(b"authorization")
        try:
            return self.gateway.keyring.authenticate(authorization, "admin")
        except Forbidden:
            return self.gateway.keyring.authenticate(authorization, "inference")

    async def _capture(
        self,
        request: Request,
        name: str,
        lane: VersionLane,
        inputs: Any,
        outputs: Any,
        status: int,
        started: float,
        user_key: str | None,
        key_id: str | None = None,
    ) -> None:
        latency_s = time.perf_counter() - started
        quality = lane.spec.quality
        if status == 200 and quality is not None:  # the rolling data-quality window
            self.gateway.quality.observe(
                name,
                quality,
                request_id=request.request_id,
                version=lane.version,
                inputs=inputs,
                outputs=outputs,
                latency_s=latency_s,
            )
        capture = self.gateway.capture
        if capture is None:
            return
        recording = capture.record(
            request_id=request.request_id,
            deployment=name,
            version=lane.version,
            inputs=inputs,
            outputs=outputs,
            latency_s=latency_s,
            status=status,
            user_key=user_key,
            key_id=key_id,
            client_request_id=request.client_request_id,
        )
        tracing = self.gateway.tracing
        if tracing is None:
            await recording
        else:
            with tracing.capture_span():
                await recording

    def _count(self, name: str, lane: VersionLane, status: int, started: float) -> None:
        elapsed_s = time.perf_counter() - started
        lane.observe(status, elapsed_s)
        version = lane.version
        key = (name, version, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.gateway.metrics.requests.labels(
                name, version, str(status)
            )
        counter.inc()
        if status == 200:
            histogram = self._request_seconds.get(key[:2])
            if histogram is None:
                histogram = self._request_seconds[key[:2]] = (
                    self.gateway.metrics.request_seconds.labels(name, version)
                )
            histogram.observe(elapsed_s)


def _expect(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"method {method} not allowed here; use {allowed}", field="method")


def _schema_of(deployment: Any) -> Any:
    if deployment.schema is None:
        raise ReplicaUnavailable(f"deployment {deployment.spec.name!r} has no ready replica yet")
    return deployment.schema


def _is_text_embedding(schema: Any) -> bool:
    """Text in, one fixed-length float vector out: what ``/v1/embeddings`` can serve."""
    if len(schema.inputs) != 1 or len(schema.outputs) != 1:
        return False
    source, target = schema.inputs[0], schema.outputs[0]
    return bool(
        source.datatype == "BYTES"
        and source.shape == ()
        and target.datatype in ("FP16", "FP32", "FP64")
        and len(target.shape) == 1
    )
