"""The one table from error class to HTTP status, and the JSON error body of each protocol.

Each family of routes answers errors the way its protocol defines them (``ErrorShape``):

- ``oip_v2`` (``/v2/...``): ``{"error": "<message>"}``, as the Open Inference Protocol v2
  REST spec says and tritonclient parses; our type and field travel in the response headers
  ``x-aiscale-error-type`` and ``x-aiscale-error-field``, where the spec leaves room.
- ``openai`` (``/v1/...``): OpenAI's ``{"error": {"message", "type", "param", "code"}}``;
  ``type`` is our error type, ``param`` the field, ``code`` ``null``.
- ``openai_llm`` (``/v1/chat/completions``, ``/v1/completions``): the same body with
  OpenAI's own vocabulary of ``type`` by status (``invalid_request_error``,
  ``authentication_error``, ``rate_limit_exceeded``, ``server_error``, ...), as the LLM
  clients and gateways that speak to these routes expect; ``code`` is our error type.
- ``aiscale`` (admin, dashboard, metrics, docs, unknown paths): ``{"error": {"type",
  "message", "field"}}`` (MLServer ``rest/errors.py``).

Domain errors know nothing of HTTP; only this module maps them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Literal

import orjson

from aiscale import errors

ErrorShape = Literal["aiscale", "oip_v2", "openai", "openai_llm"]

#: The routes that answer errors in OpenAI's own vocabulary (``openai_llm``).
LLM_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
#: OpenAI's error ``type`` by HTTP status (the LLM routes); 5xx not named: ``server_error``.
OPENAI_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    421: "invalid_request_error",
    429: "rate_limit_exceeded",
}

#: Most specific class first: the first ``isinstance`` match wins.
STATUS_BY_ERROR: tuple[tuple[type[errors.AiscaleError], int], ...] = (
    (errors.PayloadTooLarge, 413),
    (errors.MethodNotAllowed, 405),
    (errors.RequestTimeout, 408),
    (errors.UnsupportedMediaType, 415),
    (errors.MisdirectedRequest, 421),
    (errors.InvalidInput, 400),
    (errors.ConfigError, 400),
    (errors.Forbidden, 403),
    (errors.AuthError, 401),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.RateLimited, 429),
    (errors.Overloaded, 503),
    (errors.DeadlineExceeded, 504),
    (errors.ReplicaUnavailable, 503),
    (errors.ReplicaError, 500),
    (errors.ModelLoadError, 500),
    (errors.UpstreamUnavailable, 502),
)

#: The body of an error in each shape, from (type name, message, field).
BODY_BY_SHAPE: dict[ErrorShape, Callable[[str, str, str | None], dict[str, Any]]] = {
    "aiscale": lambda type_name, message, field: {
        "error": {"type": type_name, "message": message, "field": field}
    },
    "oip_v2": lambda type_name, message, field: {"error": message},
    "openai": lambda type_name, message, field: {
        "error": {"message": message, "type": type_name, "param": field, "code": None}
    },
    # ``type_name`` arrives as ``<openai type>:<our type>`` (``render_error``).
    "openai_llm": lambda type_name, message, field: {
        "error": {
            "message": message,
            "type": type_name.partition(":")[0],
            "param": field,
            "code": type_name.partition(":")[2] or None,
        }
    },
}

#: Header values may carry only visible ASCII; anything else (a client's field name) is dropped.
_NOT_HEADER_SAFE = re.compile(r"[^\x21-\x7e]")


def shape_for_path(path: str) -> ErrorShape:
    """Which protocol's error shape the route at ``path`` answers in."""
    if path == "/v2" or path.startswith("/v2/"):
        return "oip_v2"
    if path in LLM_PATHS:
        return "openai_llm"
    if path == "/v1" or path.startswith("/v1/"):
        return "openai"
    return "aiscale"


def status_for(error: errors.AiscaleError) -> int:
    for error_class, status in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return status
    return 500


def error_body(
    type_name: str, message: str, field: str | None = None, shape: ErrorShape = "aiscale"
) -> bytes:
    return orjson.dumps(BODY_BY_SHAPE[shape](type_name, message, field))


def error_headers(
    type_name: str, field: str | None, shape: ErrorShape
) -> list[tuple[bytes, bytes]]:
    """``x-aiscale-error-type``/``-field`` where the body has no room for them (OIP v2)."""
    if shape != "oip_v2":
        return []
    headers = [(b"x-aiscale-error-type", _header_value(type_name))]
    if field:
        headers.append((b"x-aiscale-error-field", _header_value(field)))
    return headers


def _header_value(text: str) -> bytes:
    return _NOT_HEADER_SAFE.sub("", text)[:200].encode("ascii")


def render_error(
    error: errors.AiscaleError, shape: ErrorShape = "aiscale"
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and extra headers (``Retry-After`` for overload) for a domain error."""
    status = status_for(error)
    type_name = error.type_name if isinstance(error, errors.ReplicaError) else type(error).__name__
    headers = error_headers(type_name, error.field, shape)
    if shape == "openai_llm":
        type_name = f"{openai_type(status)}:{type_name}"
    if isinstance(error, errors.Overloaded):
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after_s))).encode()))
    elif isinstance(error, errors.AuthError) and not isinstance(error, errors.Forbidden):
        headers.append((b"www-authenticate", b"Bearer"))
    return status, error_body(type_name, error.message, error.field, shape), headers


def openai_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    return OPENAI_TYPE_BY_STATUS.get(status, fallback)


def render_internal_error(shape: ErrorShape) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The 500 for an unexpected exception: no detail leaves the server (it is logged)."""
    type_name, message = "InternalError", "internal server error"
    if shape == "openai_llm":
        type_name = f"server_error:{type_name}"
    return 500, error_body(type_name, message, None, shape), error_headers(type_name, None, shape)
