"""Refuse requests a browser was tricked into sending: foreign Host, foreign Origin, non-JSON.

A gateway on loopback with no API keys trusts whoever reaches it, and a web page the user
visits can reach it: through a cross-site "simple" request (``text/plain`` needs no CORS
preflight) or through DNS rebinding (the page's own name resolved to 127.0.0.1). Three
checks close that, before any route runs (``GatewayApp`` calls ``check`` first):

1. ``Host`` must name the address the connection came in on, ``localhost``, or one of
   ``allowed_hosts`` (``*``: any); else 421. A rebinding page's Host is its own name.
2. An ``Origin`` header other than the server's own is refused (403): on the admin API,
   dashboard and metrics always, on the inference API (``/v1``, ``/v2``) unless it is one of
   ``cors_origins``. Clients that are not browsers send no Origin and are not affected.
3. A request body must be ``application/json`` (or, on ``/v2``, OIP v2's binary tensor
   extension, ``application/octet-stream``); else 415. A body without a Content-Type is
   accepted from non-browser clients (tritonclient sends none) but not with an Origin.

No CORS header is sent unless the request's Origin is one of ``cors_origins``. The cost per
request is a few dict lookups: Host verdicts are remembered per (Host, local address).
This module reads headers only; it never reads a body and knows no route but its prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiscale.errors import Forbidden, MisdirectedRequest, UnsupportedMediaType
from aiscale.serving.http import Response

#: Host verdicts remembered at most; past this, new ones are computed each time.
MAX_REMEMBERED_HOSTS = 1024
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_JSON = b"application/json"
_BINARY = b"application/octet-stream"


def host_name(host_header: bytes) -> bytes:
    """The name part of a ``Host`` value, lowercased: ``[::1]:8000`` -> ``::1``."""
    value = host_header.strip().lower()
    if value.startswith(b"["):
        return value[1 : value.find(b"]")] if b"]" in value else value
    name, colon, port = value.rpartition(b":")
    return name if colon and port.isdigit() else value


class RequestGuard:
    """The Host, Origin and Content-Type checks of one gateway, from its settings."""

    def __init__(self, allowed_hosts: Iterable[str], cors_origins: Iterable[str]) -> None:
        names = {h.strip().lower() for h in allowed_hosts}
        self.is_any_host = "*" in names
        self._names = frozenset(n.encode() for n in names) | {b"localhost"}
        self._cors = frozenset(o.rstrip("/").lower().encode() for o in cors_origins)
        self._verdicts: dict[tuple[bytes, str], bool] = {}

    def check(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> Response | None:
        """Raise ``MisdirectedRequest`` (421), ``Forbidden`` (403) or
        ``UnsupportedMediaType`` (415) for a request the gateway must not serve; the
        answer to a CORS preflight from an allowed origin; ``None``: route it."""
        host = headers.get(b"host")
        if host is not None and not self.is_any_host:
            self._check_host(host, scope.get("server"))
        origin = headers.get(b"origin")
        method: str = scope["method"]
        path: str = scope["path"]
        if origin is not None and not self._is_same_origin(origin, host):
            if not _is_inference_api(path):
                raise Forbidden(
                    "the admin API, dashboard and metrics are refused to other sites' pages "
                    f"(Origin {origin.decode('latin-1')[:100]!r})",
                    field="origin",
                )
            if origin.rstrip(b"/").lower() not in self._cors:
                raise Forbidden(
                    f"requests from origin {origin.decode('latin-1')[:100]!r} are not allowed "
                    "(see --cors-origins)",
                    field="origin",
                )
            if method == "OPTIONS":  # a preflight from an allowed origin (cors_origins)
                return 204, b"", [
                    (b"access-control-allow-methods", b"GET, POST"),
                    (b"access-control-allow-headers",
                     b"authorization, content-type, inference-header-content-length, "
                     b"x-user-id, x-request-id, x-aiscale-version, x-aiscale-priority"),
                    (b"access-control-max-age", b"600"),
                ]
        if method in _STATE_CHANGING and _has_body(headers):
            self._check_content_type(headers.get(b"content-type"), origin, path)
        return None

    def cors_headers(self, path: str, headers: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        """The CORS response headers for this request: none unless its Origin is allowed
        (and it calls the inference API)."""
        if not self._cors or not _is_inference_api(path):
            return []
        origin = headers.get(b"origin")
        if origin is None or origin.rstrip(b"/").lower() not in self._cors:
            return []
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]

    def _check_host(self, host: bytes, server: Any) -> None:
        local = str(server[0]) if server else ""
        verdict = self._verdicts.get((host, local))
        if verdict is None:
            name = host_name(host)
            verdict = name in self._names or (bool(local) and name == local.lower().encode())
            if len(self._verdicts) < MAX_REMEMBERED_HOSTS:
                self._verdicts[(host, local)] = verdict
        if not verdict:
            raise MisdirectedRequest(
                f"this server does not answer for host {host.decode('latin-1')[:100]!r} "
                "(see --allowed-hosts)",
                field="host",
            )

    @staticmethod
    def _is_same_origin(origin: bytes, host: bytes | None) -> bool:
        _, sep, authority = origin.partition(b"://")
        return bool(sep) and host is not None and authority.lower() == host.strip().lower()

    @staticmethod
    def _check_content_type(content_type: bytes | None, origin: bytes | None, path: str) -> None:
        if content_type is None:
            if origin is None:
                return  # not a browser: tritonclient sends no Content-Type
            raise UnsupportedMediaType(
                "a request body needs Content-Type: application/json", field="content-type"
            )
        media = content_type.partition(b";")[0].strip().lower()
        if media == _JSON or (media == _BINARY and path.startswith("/v2/")):
            return
        raise UnsupportedMediaType(
            f"Content-Type {media.decode('latin-1')[:100]!r} is not accepted here; "
            "send application/json"
            + (" (or application/octet-stream with Inference-Header-Content-Length)"
               if path.startswith("/v2/") else ""),
            field="content-type",
        )


def _is_inference_api(path: str) -> bool:
    """``/v1`` and ``/v2``: the only routes ``cors_origins`` opens to other sites."""
    return path.startswith(("/v1/", "/v2/")) or path in ("/v1", "/v2")


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    if length is not None:
        return length.strip() not in (b"0", b"")
    return b"transfer-encoding" in headers
