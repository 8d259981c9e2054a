"""The dashboard's static files: the page, its script, and plotly.js from the ``plotly`` package.

Answers ``GET /dashboard`` (``index.html``), ``GET /dashboard/dashboard.js``,
``GET /dashboard/llm_panel.js`` (the LLM deployments' panel, which reads ``/metrics``) and
``GET /dashboard/plotly.min.js``. The page is static; its script polls the admin API
(``/admin/monitor/snapshot``) with the admin key it was given, so this module needs no auth and
holds no state but the file bytes, read once on first use.

plotly.js comes from the file the ``plotly`` Python package bundles
(``plotly/package_data/plotly.min.js``), never from a CDN: the dashboard must work on a machine
with no internet access, and a pinned local copy cannot change under us. It is 4-5 MB, so it is
read and gzip-compressed once, in a worker thread (never on the event loop), and sent with a
long cache lifetime.

This module never touches the gateway, the registry or the network.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import anyio

from aiscale.errors import MethodNotAllowed, NotFound

__all__ = ["DashboardAssets", "Response", "plotly_js_path"]

Response = tuple[int, bytes, list[tuple[bytes, bytes]]]

# The page may load scripts and make requests only to this server: a CDN copy or any other
# origin is refused by the browser. Inline styles are allowed (index.html carries its CSS and
# plotly.js styles its own elements).
_CSP = (
    b"default-src 'self'; script-src 'self'; connect-src 'self'; "
    b"style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:"
)
_PAGE_FILES = {"": ("index.html", b"text/html; charset=utf-8"),
               "dashboard.js": ("dashboard.js", b"application/javascript; charset=utf-8"),
               "llm_panel.js": ("llm_panel.js", b"application/javascript; charset=utf-8")}
_PLOTLY = "plotly.min.js"


def plotly_js_path() -> Path | None:
    """Where the installed ``plotly`` package keeps its bundled ``plotly.min.js``; ``None``
    when the package (or that file) is missing. Finds the file without importing plotly."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "package_data" / _PLOTLY
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    gzipped: bytes | None
    content_type: bytes
    cache_control: bytes


def _read_page_file(name: str, content_type: bytes) -> _Asset:
    body = resources.files("aiscale.dashboard").joinpath(name).read_bytes()
    # Our own files change with the package: always revalidate.
    return _Asset(body, None, content_type, b"no-cache")


def _read_plotly() -> _Asset:
    path = plotly_js_path()
    if path is None:
        raise NotFound(
            "plotly.js is not available: install the 'plotly' Python package on the server",
            field="path",
        )
    body = path.read_bytes()
    return _Asset(
        body,
        gzip.compress(body, compresslevel=6),
        b"application/javascript; charset=utf-8",
        b"public, max-age=86400",
    )


class DashboardAssets:
    """Serves the dashboard's files; one instance per gateway app, files cached after first use.

    ``handle`` is called by the gateway's router with the path parts after ``dashboard``.
    Raises ``NotFound`` for any other file and ``MethodNotAllowed`` for anything but GET.
    """

    def __init__(self) -> None:
        self._cache: dict[str, _Asset] = {}
        self._lock = anyio.Lock()

    async def handle(
        self, method: str, parts: list[str], accept_encoding: str | None
    ) -> Response:
        key = "/".join(parts)
        if key not in _PAGE_FILES and key != _PLOTLY:
            raise NotFound(f"no dashboard file at /dashboard/{key}", field="path")
        if method != "GET":
            raise MethodNotAllowed(f"method {method} not allowed here; use GET", field="method")
        asset = await self._asset(key)
        headers = [
            (b"content-type", asset.content_type),
            (b"cache-control", asset.cache_control),
            (b"x-content-type-options", b"nosniff"),
            (b"vary", b"accept-encoding"),
        ]
        if key == "":
            headers.append((b"content-security-policy", _CSP))
        body = asset.body
        if asset.gzipped is not None and accept_encoding and "gzip" in accept_encoding:
            body = asset.gzipped
            headers.append((b"content-encoding", b"gzip"))
        return 200, body, headers

    async def _asset(self, key: str) -> _Asset:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        async with self._lock:  # the first few page loads may race; read each file once
            cached = self._cache.get(key)
            if cached is None:
                if key == _PLOTLY:
                    cached = await anyio.to_thread.run_sync(_read_plotly)
                else:
                    name, content_type = _PAGE_FILES[key]
                    cached = await anyio.to_thread.run_sync(_read_page_file, name, content_type)
                self._cache[key] = cached
            return cached
