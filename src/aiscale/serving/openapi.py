"""The OpenAPI 3.1 document of every public and admin route (``GET /openapi.json``), and the
page that shows it (``GET /docs``).

One table of operations names each route's method, path, request body, answers and errors;
the JSON schemas come from pydantic models (``model_json_schema``): the admin, monitor and
repository-index bodies from the very models that validate them, the hand-parsed protocol
bodies and all responses from ``api_schemas.py``. Error answers use each protocol's shape
(``errors.py``). The page is rendered here from the document, self-contained (no script, no
CDN): a reader offline sees every route, its schemas and its errors. Never routes a request.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from aiscale.config import DeploymentConfig
from aiscale.monitor.api import SilenceBody
from aiscale.serving import api_schemas as s
from aiscale.serving.admin import RolloutBody, ScaleBody, SplitBody, VersionBody
from aiscale.serving.errors import ErrorShape, shape_for_path
from aiscale.serving.oip_v2_extensions import RepositoryIndexRequest

__all__ = ["Operation", "OPERATIONS", "build_document", "document_json", "docs_html"]

_REF = "#/components/schemas/{model}"
_ERROR_MODELS: dict[ErrorShape, type[BaseModel]] = {
    "oip_v2": s.OipV2Error,
    "openai": s.OpenAIError,
    "openai_llm": s.OpenAIError,
    "aiscale": s.AiscaleError,
}
_ERROR_DESCRIPTIONS = {
    400: "bad input; the message (and the field) names what is wrong",
    401: "missing or unknown API key",
    403: "the key lacks the scope",
    404: "unknown model, version, deployment or path",
    408: "the body did not arrive in time",
    409: "conflicts with the current state (or the part is switched off)",
    413: "body larger than the server's limit",
    415: "a body type other than application/json (or octet-stream on /v2)",
    429: "the key's rate limit; retry after Retry-After seconds",
    500: "the model raised (the type names its exception), or an internal error",
    502: "a service the server reads from failed",
    503: "queue full (with Retry-After) or no replica ready",
    504: "the request's deadline passed",
}


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    schema: dict[str, Any]
    is_required: bool = False


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path. ``response`` ``None``: the answer is not JSON (``media``)."""

    method: str
    path: str
    summary: str
    tag: str
    response: type[BaseModel] | None
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    #: The API key scope the route needs when keys are configured; ``None``: open.
    scope: str | None = None
    media: str = "application/json"
    #: Other statuses answered with ``response`` (``/ready`` answers 503 when not ready).
    also_ok: tuple[int, ...] = ()
    query: tuple[QueryParam, ...] = ()
    path_enums: tuple[tuple[str, tuple[str, ...]], ...] = ()
    is_list: bool = False
    description: str = ""

    @property
    def shape(self) -> ErrorShape:
        return shape_for_path(self.path)


_AUTH = (401, 403)
_INFER_ERRORS = (400, *_AUTH, 404, 413, 429, 500, 503, 504)
_LLM_ERRORS = (400, *_AUTH, 404, 413, 429, 500, 502, 503)
_MODEL = "/v2/models/{model}"
_VERSION = "/v2/models/{model}/versions/{version}"
_DEPLOYMENT = "/admin/deployments/{name}"
_NUMBER = {"type": "number"}


def _v2_model_operations(prefix: str) -> list[Operation]:
    versioned = " (one version)" if "versions" in prefix else ""
    return [
        Operation("get", prefix, f"Model metadata{versioned}", "OIP v2", s.ModelMetadata,
                  (*_AUTH, 404), scope="inference"),
        Operation("get", f"{prefix}/ready", f"Model readiness{versioned}", "OIP v2",
                  s.ModelReady, (*_AUTH, 404), scope="inference", also_ok=(503,)),
        Operation("post", f"{prefix}/infer", f"Inference{versioned}", "OIP v2",
                  s.InferResponse, _INFER_ERRORS, body=s.InferRequest, scope="inference",
                  description="JSON tensors, or Triton's binary tensor extension: a JSON "
                  "header of Inference-Header-Content-Length bytes followed by the raw "
                  "tensors (``parameters.binary_data_size``); binary output is asked with "
                  "``parameters.binary_data_output`` and answered as application/octet-stream."),
        Operation("get", f"{prefix}/config", f"Model configuration{versioned} (Triton)",
                  "Triton extensions", s.ModelConfig, (*_AUTH, 404), scope="inference"),
        Operation("get", f"{prefix}/stats", f"Model statistics{versioned} (Triton)",
                  "Triton extensions", s.ModelStats, (*_AUTH, 404), scope="inference"),
    ]


_ADMIN_ERRORS = (400, *_AUTH, 404, 409)
_MONITOR_ERRORS = (400, *_AUTH, 404, 409, 502)

OPERATIONS: tuple[Operation, ...] = (
    # ----- OIP v2 --------------------------------------------------------------------------
    Operation("get", "/v2/health/live", "Liveness", "OIP v2", s.ServerLive),
    Operation("get", "/v2/health/ready", "Readiness of every deployment", "OIP v2",
              s.ServerReady, also_ok=(503,)),
    Operation("get", "/v2", "Server metadata", "OIP v2", s.ServerMetadata, _AUTH,
              scope="inference"),
    *_v2_model_operations(_MODEL),
    *_v2_model_operations(_VERSION),
    Operation("get", "/v2/models/stats", "Statistics of every model (Triton)",
              "Triton extensions", s.ModelStats, _AUTH, scope="inference"),
    Operation("post", "/v2/repository/index", "Model repository index (Triton)",
              "Triton extensions", s.RepositoryModel, (400, *_AUTH, 413),
              body=RepositoryIndexRequest, scope="inference", is_list=True,
              description="Every deployed version with its state; the body is optional."),
    # ----- OpenAI ------------------------------------------------------------------------
    Operation("get", "/v1/models", "Deployments as OpenAI models", "OpenAI", s.ModelList,
              _AUTH, scope="inference"),
    Operation("get", "/v1/models/{model}", "One deployment as an OpenAI model", "OpenAI",
              s.ModelObject, (*_AUTH, 404), scope="inference"),
    Operation("post", "/v1/embeddings", "Embeddings", "OpenAI", s.EmbeddingsResponse,
              _INFER_ERRORS, body=s.EmbeddingsBody, scope="inference",
              description="``model`` names a deployment that turns text into one vector."),
    Operation("post", "/v1/chat/completions", "Chat completion (LLM)", "OpenAI",
              s.ChatCompletion, _LLM_ERRORS, body=s.ChatCompletionBody, scope="inference",
              description="``model`` names an LLM deployment. ``stream: true`` answers "
              "text/event-stream (OpenAI's chunks, then ``data: [DONE]``). Errors use "
              "OpenAI's types (``invalid_request_error``, ``rate_limit_exceeded``...)."),
    Operation("post", "/v1/completions", "Text completion (LLM)", "OpenAI", s.Completion,
              _LLM_ERRORS, body=s.CompletionBody, scope="inference",
              description="``model`` names an LLM deployment; ``stream: true`` as for chat."),
    Operation("post", "/v1/feedback", "Feedback on an earlier answer", "aiscale",
              s.FeedbackReceipt, (400, *_AUTH, 409, 413, 429), body=s.FeedbackBody,
              scope="inference", description="Needs capture on (409 otherwise)."),
    # ----- server ------------------------------------------------------------------------
    Operation("get", "/metrics", "Prometheus metrics", "aiscale", None, _AUTH,
              scope="metrics", media="text/plain",
              description="The key is asked for only when the server requires one for metrics."),
    Operation("get", "/openapi.json", "This document", "aiscale", None),
    Operation("get", "/docs", "This document as a page", "aiscale", None, media="text/html"),
    Operation("get", "/dashboard/", "The dashboard page", "aiscale", None, media="text/html"),
    Operation("get", "/dashboard/dashboard.js", "The dashboard's script", "aiscale", None,
              media="application/javascript"),
    Operation("get", "/dashboard/plotly.min.js", "plotly.js, from the server's plotly package",
              "aiscale", None, (404,), media="application/javascript"),
    # ----- admin -------------------------------------------------------------------------
    Operation("get", "/admin/deployments", "Every deployment", "admin", s.DeploymentList,
              _AUTH, scope="admin"),
    Operation("post", "/admin/deployments", "Deploy a model", "admin", s.DeploymentView,
              (*_ADMIN_ERRORS, 413, 500, 503), body=DeploymentConfig, scope="admin"),
    Operation("get", _DEPLOYMENT, "One deployment", "admin", s.DeploymentView,
              (*_AUTH, 404), scope="admin"),
    Operation("delete", _DEPLOYMENT, "Remove a deployment", "admin", s.Deleted,
              (*_AUTH, 404), scope="admin"),
    Operation("post", f"{_DEPLOYMENT}/scale", "Set the replica count", "admin",
              s.DeploymentView, (*_ADMIN_ERRORS, 413, 500, 503), body=ScaleBody,
              scope="admin"),
    Operation("get", f"{_DEPLOYMENT}/quality", "Rolling-window data quality", "admin",
              s.AdminObject, (*_AUTH, 404, 409), scope="admin"),
    Operation("post", f"{_DEPLOYMENT}/rollout", "Start a rollout", "admin", s.AdminObject,
              (*_ADMIN_ERRORS, 413), body=RolloutBody, scope="admin"),
    Operation("get", f"{_DEPLOYMENT}/rollout", "The rollout's status", "admin",
              s.AdminObject, (*_AUTH, 404), scope="admin"),
    Operation("post", f"{_DEPLOYMENT}/rollout/{{action}}", "Pause, resume, promote or abort",
              "admin", s.AdminObject, (*_AUTH, 404, 409, 504), scope="admin",
              path_enums=(("action", ("abort", "pause", "promote", "resume")),)),
    Operation("post", f"{_DEPLOYMENT}/rollback", "Roll back to the baseline", "admin",
              s.AdminObject, (*_AUTH, 404, 409, 504), scope="admin"),
    Operation("put", f"{_DEPLOYMENT}/split", "Set the traffic split", "admin",
              s.DeploymentView, (*_ADMIN_ERRORS, 413), body=SplitBody, scope="admin"),
    Operation("post", f"{_DEPLOYMENT}/versions", "Warm another version", "admin",
              s.DeploymentView, (*_ADMIN_ERRORS, 413, 500, 503), body=VersionBody,
              scope="admin"),
    Operation("delete", f"{_DEPLOYMENT}/versions/{{version}}", "Remove a version", "admin",
              s.DeploymentView, _ADMIN_ERRORS, scope="admin"),
    Operation("get", f"{_DEPLOYMENT}/stats", "Counts and latency per version", "admin",
              s.VersionStats, (*_AUTH, 404), scope="admin"),
    Operation("get", "/admin/gpus", "The GPU pool", "admin", s.AdminObject, _AUTH,
              scope="admin"),
    Operation("post", "/admin/keys/refresh", "Reload API keys now", "admin", s.Refreshed,
              _AUTH, scope="admin"),
    Operation("get", "/admin/monitor/snapshot", "The monitor's view", "admin", s.AdminObject,
              _MONITOR_ERRORS, scope="admin",
              query=(QueryParam("window_s", {"type": "number", "minimum": 1}),
                     QueryParam("step_s", {"type": "number", "minimum": 0.001}))),
    Operation("get", "/admin/monitor/history", "One series of the metrics history", "admin",
              s.AdminObject, _MONITOR_ERRORS, scope="admin",
              query=(QueryParam("deployment", {"type": "string"}, is_required=True),
                     QueryParam("series", {"type": "string"}),
                     QueryParam("version", {"type": "string"}),
                     QueryParam("since_s", _NUMBER), QueryParam("until_s", _NUMBER),
                     QueryParam("step_s", {"type": "number", "minimum": 0.001}),
                     QueryParam("source", {"enum": ["local", "prometheus"]}))),
    Operation("get", "/admin/monitor/alerts", "Alerts and silences", "admin", s.AdminObject,
              _MONITOR_ERRORS, scope="admin"),
    Operation("get", "/admin/monitor/audit", "The monitor's audit log", "admin",
              s.AdminObject, _MONITOR_ERRORS, scope="admin",
              query=(QueryParam("limit", {"type": "number", "minimum": 1}),)),
    Operation("get", "/admin/monitor/silences", "Silences", "admin", s.AdminObject,
              _MONITOR_ERRORS, scope="admin"),
    Operation("post", "/admin/monitor/silences", "Silence alerts", "admin", s.AdminObject,
              (*_MONITOR_ERRORS, 413), body=SilenceBody, scope="admin"),
)


def _schemas() -> tuple[dict[Any, Any], dict[str, Any]]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for operation in OPERATIONS:
        if operation.body is not None:
            wanted[(operation.body, "validation")] = None
        if operation.response is not None:
            wanted[(operation.response, "serialization")] = None
    for model in _ERROR_MODELS.values():
        wanted[(model, "serialization")] = None
    refs, definitions = models_json_schema(list(wanted), ref_template=_REF)
    return refs, definitions.get("$defs", {})


def _error_response(status: int, shape: ErrorShape, ref: Any) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if shape == "oip_v2":
        headers["x-aiscale-error-type"] = {
            "description": "the error's type (e.g. InvalidInput, NotFound, AuthError)",
            "required": True,
            "schema": {"type": "string"},
        }
        headers["x-aiscale-error-field"] = {
            "description": "the offending field, where there is one",
            "schema": {"type": "string"},
        }
    if status in (429, 503):
        headers["retry-after"] = {"description": "seconds", "schema": {"type": "string"}}
    if status == 401:
        headers["www-authenticate"] = {"schema": {"type": "string"}}
    response: dict[str, Any] = {
        "description": _ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": ref}},
    }
    if headers:
        response["headers"] = headers
    return response


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    if op.response is None:
        schema: dict[str, Any] = {"type": "object"} if op.media == "application/json" else {
            "type": "string"}
    else:
        ref = refs[(op.response, "serialization")]
        schema = {"type": "array", "items": ref} if op.is_list else ref
    content: dict[str, Any] = {op.media: {"schema": schema}}
    if op.path.endswith("/infer"):
        content["application/octet-stream"] = {
            "schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
    if op.body in (s.ChatCompletionBody, s.CompletionBody):
        content["text/event-stream"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    for status in op.also_ok:
        responses[str(status)] = {"description": "not ready", "content": content}
    error_ref = refs[(_ERROR_MODELS[op.shape], "serialization")]
    errors = list(op.errors)
    if op.body is not None:
        errors += [408, 415]
    if op.path.startswith("/admin/") and op.method != "get":
        errors.append(415)  # the origin guard of state-changing admin calls
    for status in sorted(set(errors)):
        if str(status) not in responses:
            responses[str(status)] = _error_response(status, op.shape, error_ref)
    enums = dict(op.path_enums)
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "enum": list(enums[name])} if name in enums
         else {"type": "string", "minLength": 1}}
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    parameters += [
        {"name": q.name, "in": "query", "required": q.is_required, "schema": q.schema}
        for q in op.query
    ]
    operation: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    description = op.description
    if op.scope is not None:
        operation["security"] = [{"bearer": []}, {}]
        description = f"{description} Needs a key with the `{op.scope}` scope when keys are "\
            "configured.".strip()
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {
            "required": op.body is not RepositoryIndexRequest,
            "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
        }
    return operation


def _operation_id(op: Operation) -> str:
    words = re.sub(r"[{}]", "", op.path).strip("/").replace(".", "_").split("/")
    return "_".join([op.method, *[w for w in words if w]]).replace("-", "_")


def build_document(server_name: str, server_version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document; built from ``OPERATIONS`` and the pydantic models."""
    refs, definitions = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": server_name,
            "version": server_version,
            "description": "Errors: OIP v2 routes answer `{\"error\": \"message\"}` with the "
            "type and field in `x-aiscale-error-type`/`x-aiscale-error-field`; OpenAI routes "
            "`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`; the rest "
            "`{\"error\": {\"type\", \"message\", \"field\"}}`.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@functools.cache
def document_json(server_name: str, server_version: str) -> bytes:
    """``build_document`` as JSON, built once per process (the operations never change)."""
    return orjson.dumps(build_document(server_name, server_version))


@functools.cache
def docs_html(server_name: str, server_version: str) -> bytes:
    """A self-contained page listing every route, its answers and the schemas."""
    document = build_document(server_name, server_version)
    e = html.escape
    rows: list[str] = []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            answers = ", ".join(
                f"{status} {_schema_link(r)}" for status, r in op["responses"].items()
            )
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            rows.append(
                f"<tr><td><code>{e(method.upper())}</code></td><td><code>{e(path)}</code></td>"
                f"<td>{e(op['summary'])}<br><small>{e(op.get('description', ''))}</small></td>"
                f"<td>{_schema_link({'content': {'': body}}) if body else ''}</td>"
                f"<td>{answers}</td></tr>"
            )
    schemas = "".join(
        f'<h3 id="{e(name)}">{e(name)}</h3><pre>'
        f"{e(orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode())}</pre>"
        for name, schema in sorted(document["components"]["schemas"].items())
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{e(server_name)} API</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
        "pre{background:#f6f6f6;padding:8px;overflow:auto}</style></head><body>"
        f"<h1>{e(server_name)} {e(server_version)} API</h1>"
        f"<p>{e(document['info']['description'])} "
        "The machine-readable document is <a href='/openapi.json'>/openapi.json</a>.</p>"
        "<table><tr><th>method</th><th>path</th><th>what</th><th>body</th><th>answers</th>"
        f"</tr>{''.join(rows)}</table><h2>Schemas</h2>{schemas}</body></html>"
    )
    return page.encode()


def _schema_link(response: dict[str, Any]) -> str:
    for media in response.get("content", {}).values():
        schema = media.get("schema", {}) if media else {}
        ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
        if ref:
            name = ref.rsplit("/", 1)[-1]
            return f'<a href="#{html.escape(name)}">{html.escape(name)}</a>'
    return ""
