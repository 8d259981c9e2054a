"""The one table from error class to HTTP status, and the JSON error body of each protocol.

Each family of routes answers errors the way its protocol defines them (``ErrorShape``):

- ``oip_v2`` (``/v2/...``): ``{"error": "<message>"}``, as the Open Inference Protocol v2
  REST spec says and tritonclient parses; our type and field travel in the response headers
  ``x-aiscale-error-type`` and ``x-aiscale-error-field``, where the spec leaves room.
- ``openai`` (``/v1/...``): OpenAI's ``{"error": {"message", "type", "param", "code"}}``;
  ``type`` is our error type, ``param`` the field, ``code`` ``null``.
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

ErrorShape = Literal["aiscale", "oip_v2", "openai"]

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
}

#: Header values may carry only visible ASCII; anything else (a client's field name) is dropped.
_NOT_HEADER_SAFE = re.compile(r"[^\x21-\x7e]")


def shape_for_path(path: str) -> ErrorShape:
    """Which protocol's error shape the route at ``path`` answers in."""
    if path == "/v2" or path.startswith("/v2/"):
        return "oip_v2"
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
    if isinstance(error, errors.Overloaded):
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after_s))).encode()))
    elif isinstance(error, errors.AuthError) and not isinstance(error, errors.Forbidden):
        headers.append((b"www-authenticate", b"Bearer"))
    return status, error_body(type_name, error.message, error.field, shape), headers


def render_internal_error(shape: ErrorShape) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The 500 for an unexpected exception: no detail leaves the server (it is logged)."""
    type_name, message = "InternalError", "internal server error"
    return 500, error_body(type_name, message, None, shape), error_headers(type_name, None, shape)
