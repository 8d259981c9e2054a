"""The gateway as a plain ASGI app: routing, body limits, auth, and the protocol endpoints.

A hand-written ASGI callable rather than a framework router: the hot path is the product,
and each request here costs a dict lookup and a few function calls before the batcher.
Every domain error becomes a JSON error body through ``serving/errors.py``; anything
unexpected is logged with the request id and answered with a 500 JSON body.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aiscale.dashboard import DashboardAssets
from aiscale.errors import (
    AiscaleError,
    Conflict,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    ReplicaUnavailable,
)
from aiscale.serving import feedback, oip_v2, openai_api
from aiscale.serving.admin import AdminApi
from aiscale.serving.deployment import Deployment
from aiscale.serving.errors import error_body, render_error
from aiscale.serving.gateway import Gateway
from aiscale.serving.http import Receive, Request, Response, Scope, Send
from aiscale.serving.lane import VersionLane

logger = logging.getLogger(__name__)

_JSON = (b"content-type", b"application/json")


def _json(status: int, payload: Any) -> Response:
    return status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), [_JSON]


class GatewayApp:
    """ASGI entry point; ``gateway`` holds all state, this class only speaks HTTP."""

    def __init__(self, gateway: Gateway, *, on_ready: Callable[[], None] | None = None) -> None:
        self.gateway = gateway
        self.admin = AdminApi(gateway)
        self.dashboard = DashboardAssets()
        self._on_ready = on_ready
        self._request_counters: dict[tuple[str, str, int], Any] = {}
        self._request_seconds: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
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
        request = Request(scope, receive, self.gateway.settings.max_body_bytes)
        try:
            status, body, headers = await self._route(request, scope["method"], scope["path"])
        except AiscaleError as exc:
            status, body, headers = render_error(exc)
            headers.append(_JSON)
        except Exception:  # the request boundary: log with context, answer 500 JSON
            logger.exception("unhandled error", extra={"request_id": request.request_id})
            status, body, headers = (
                500,
                error_body("InternalError", "internal server error"),
                [_JSON],
            )
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"x-request-id", request.request_id.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, request: Request, method: str, path: str) -> Response:
        parts = path.strip("/").split("/")
        head = parts[0]
        if head == "v2":
            return await self._v2(request, method, parts[1:])
        if head == "v1":
            return await self._v1(request, method, parts[1:])
        if path == "/metrics":
            _expect(method, "GET")
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
        self.gateway.keyring.authenticate(request.header(b"authorization"), "inference")
        if not parts or parts == [""]:
            _expect(method, "GET")
            return _json(
                200,
                {
                    "name": self.gateway.settings.server_name,
                    "version": self.gateway.settings.server_version,
                    "extensions": ["binary_tensor_data"],
                },
            )
        if parts[0] != "models" or len(parts) < 2:
            raise NotFound(f"no endpoint at /v2/{'/'.join(parts)}", field="path")
        name, rest = parts[1], parts[2:]
        version: str | None = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        deployment = self.gateway.deployment(name)
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
        if rest == ["infer"]:
            _expect(method, "POST")
            forced = version or request.header(b"x-aiscale-version")
            lane = deployment.route(request.header(b"x-user-id"), forced)
            return await self._infer_v2(request, deployment, lane)
        raise NotFound(f"no endpoint at /v2/{'/'.join(parts)}", field="path")

    async def _infer_v2(
        self, request: Request, deployment: Deployment, lane: VersionLane
    ) -> Response:
        started = time.perf_counter()
        status = 500
        inputs: Any = None
        outputs: Any = None
        user_key = request.header(b"x-user-id")
        try:
            caller = self.gateway.keyring.authenticate(
                request.header(b"authorization"), "inference"
            )
            user_key = user_key or caller.key_id
            if caller.rate_limit_per_s is not None:
                await self.gateway.admit(caller)
            if self.gateway.shedding:
                self.gateway.check_priority(deployment.name, request.header(b"x-aiscale-priority"))
            body = await request.body()
            schema = _schema_of(lane)
            length = request.header(b"inference-header-content-length")
            if length is not None and not length.isdigit():
                raise InvalidInput(
                    "Inference-Header-Content-Length must be an integer", field="headers"
                )
            parsed = oip_v2.parse_infer_request(body, int(length) if length else None, schema)
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
                                user_key)
            return status, payload, headers
        except AiscaleError as exc:
            status = render_error(exc)[0]
            await self._capture(request, deployment.name, lane, inputs, None, status, started,
                                user_key)
            raise
        finally:
            self._count(deployment.name, lane, status, started)

    # ----- OpenAI ------------------------------------------------------------------------
    async def _v1(self, request: Request, method: str, parts: list[str]) -> Response:
        caller = self.gateway.keyring.authenticate(request.header(b"authorization"), "inference")
        if parts == ["models"]:
            _expect(method, "GET")
            return _json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": name, "object": "model", "created": 0, "owned_by": "aiscale"}
                        for name in self.gateway.deployments
                    ],
                },
            )
        if parts == ["embeddings"]:
            _expect(method, "POST")
            return await self._embeddings(request, caller)
        if parts == ["feedback"]:
            _expect(method, "POST")
            return await self._feedback(request, caller)
        raise NotFound(f"no endpoint at /v1/{'/'.join(parts)}", field="path")

    async def _embeddings(self, request: Request, caller: Any) -> Response:
        started = time.perf_counter()
        status = 500
        name = ""
        lane: VersionLane | None = None
        texts: list[str] | None = None
        user_key: str | None = request.header(b"x-user-id") or caller.key_id
        try:
            if caller.rate_limit_per_s is not None:
                await self.gateway.admit(caller)
            parsed = openai_api.parse_embeddings_request(await request.body())
            deployment = self.gateway.deployment(parsed.model)
            name = deployment.name
            if self.gateway.shedding:
                self.gateway.check_priority(name, request.header(b"x-aiscale-priority"))
            user_key = request.header(b"x-user-id") or parsed.user or caller.key_id
            lane = deployment.route(user_key, request.header(b"x-aiscale-version"))
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
            await self._capture(request, name, lane, texts, outputs, status, started, user_key)
            return status, payload, [_JSON, (b"x-aiscale-version", lane.version.encode())]
        except AiscaleError as exc:
            status = render_error(exc)[0]
            if lane is not None:
                await self._capture(request, name, lane, texts, None, status, started, user_key)
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
        record = feedback.parse_feedback(
            await request.body(),
            feedback_id=uuid.uuid4().hex,
            user_hash=capture.backend.hash_user_key(user_key) if user_key else None,
        )
        await capture.backend.append_feedback(record)
        return _json(
            200,
            {"feedback_id": record.feedback_id, "request_id": record.request_id, "recorded": True},
        )

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
        await capture.record(
            request_id=request.request_id,
            deployment=name,
            version=lane.version,
            inputs=inputs,
            outputs=outputs,
            latency_s=latency_s,
            status=status,
            user_key=user_key,
        )

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
