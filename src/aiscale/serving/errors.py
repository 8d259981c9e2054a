"""The one table from error class to HTTP status, and the JSON error body.

Body: ``{"error": {"type": ..., "message": ..., "field": ...}}`` (MLServer ``rest/errors.py``).
Domain errors know nothing of HTTP; only this module maps them.
"""

from __future__ import annotations

import math

import orjson

from aiscale import errors

#: Most specific class first: the first ``isinstance`` match wins.
STATUS_BY_ERROR: tuple[tuple[type[errors.AiscaleError], int], ...] = (
    (errors.PayloadTooLarge, 413),
    (errors.MethodNotAllowed, 405),
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


def status_for(error: errors.AiscaleError) -> int:
    for error_class, status in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return status
    return 500


def error_body(type_name: str, message: str, field: str | None = None) -> bytes:
    return orjson.dumps({"error": {"type": type_name, "message": message, "field": field}})


def render_error(error: errors.AiscaleError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and extra headers (``Retry-After`` for overload) for a domain error."""
    status = status_for(error)
    type_name = error.type_name if isinstance(error, errors.ReplicaError) else type(error).__name__
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(error, errors.Overloaded):
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after_s))).encode()))
    elif isinstance(error, errors.AuthError) and not isinstance(error, errors.Forbidden):
        headers.append((b"www-authenticate", b"Bearer"))
    return status, error_body(type_name, error.message, error.field), headers
