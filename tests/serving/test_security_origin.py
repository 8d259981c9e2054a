"""Cross-site and DNS-rebinding calls are refused before any route runs.

A web page can make a browser send a ``text/plain`` POST to a loopback server with no keys,
or rebind its own name to 127.0.0.1. The gateway checks Host, Origin and Content-Type:
such requests get 421/403/415 and change nothing, while clients that are not browsers, and
same-origin pages sending JSON, keep working.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from aiscale.serving import GatewaySettings
from aiscale.serving.server import ThreadedServer
from tests.serving.conftest import python_spec, start_gateway

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    started = start_gateway(
        python_spec("echo", "Echo"),
        settings=GatewaySettings(
            drain_timeout_s=5.0,
            allowed_hosts=("api.example.com",),
            cors_origins=("https://app.example.com",),
        ),
    )
    yield started
    started.stop()


def message_of(response: httpx.Response) -> str:
    """The error message in either shape (OIP v2's ``{"error": str}`` or ours)."""
    error = response.json()["error"]
    return error if isinstance(error, str) else str(error["message"])


def wanted_replicas(url: str) -> int:
    response = httpx.get(f"{url}/admin/deployments/echo")
    assert response.status_code == 200, response.text
    return int(response.json()["replicas"]["wanted"])


def test_cross_site_text_plain_scale_is_refused(server: ThreadedServer) -> None:
    """The attack as a browser sends it (text/plain, foreign Origin, rebound Host) is
    refused at every step, and the deployment keeps its replica."""
    url = f"{server.url}/admin/deployments/echo/scale"
    port = server.url.rsplit(":", 1)[1]
    body = json.dumps({"replicas": 0})
    attempts = [
        # DNS rebinding: the page's own name now resolves to 127.0.0.1.
        ({"host": f"evil.example:{port}", "origin": f"{EVIL}:{port}"}, 421, "host"),
        # Plain cross-site: the real Host, a foreign Origin.
        ({"origin": EVIL}, 403, "origin"),
        # Even an origin allowed for CORS may not change admin state.
        ({"origin": "https://app.example.com"}, 403, "origin"),
        # Same origin, but a body type a browser sends without a preflight.
        ({"origin": server.url}, 415, "content-type"),
    ]
    for headers, status, field in attempts:
        response = httpx.post(url, content=body, headers={"content-type": "text/plain", **headers})
        assert response.status_code == status, (headers, response.text)
        assert response.json()["error"]["field"] == field
        assert "access-control-allow-origin" not in response.headers
    assert wanted_replicas(server.url) == 1


def test_foreign_host_is_refused(server: ThreadedServer) -> None:
    """A Host that names none of the server's names gets 421, on every route family."""
    for path in ["/v2/models/echo", "/v1/models", "/admin/deployments"]:
        response = httpx.get(f"{server.url}{path}", headers={"host": "rebound.example"})
        assert response.status_code == 421, (path, response.text)
        assert "rebound.example" in message_of(response)
    response = httpx.post(
        f"{server.url}/v2/models/echo/infer", json=TEXT, headers={"host": "rebound.example:80"}
    )
    assert response.status_code == 421


def test_same_origin_and_non_browser_clients_work(server: ThreadedServer) -> None:
    """JSON from a client with no Origin, from the server's own origin, under localhost or
    a configured name works; so does a body without Content-Type from a non-browser."""
    infer = f"{server.url}/v2/models/echo/infer"
    port = server.url.rsplit(":", 1)[1]
    for headers in [
        {},
        {"origin": server.url},
        {"host": f"localhost:{port}"},
        {"host": "API.example.com"},
    ]:
        response = httpx.post(infer, json=TEXT, headers=headers)
        assert response.status_code == 200, (headers, response.text)
    assert httpx.post(infer, content=json.dumps(TEXT)).status_code == 200  # no Content-Type
    response = httpx.post(
        f"{server.url}/admin/deployments/echo/scale",
        json={"replicas": 1},
        headers={"origin": server.url},
    )
    assert response.status_code == 200, response.text
    # A body with no Content-Type from a browser (it sends an Origin) is refused.
    response = httpx.post(infer, content=json.dumps(TEXT), headers={"origin": server.url})
    assert response.status_code == 415


def test_cors_headers_only_for_configured_origins(server: ThreadedServer) -> None:
    """No CORS header unless the Origin is configured; a configured one may infer cross-site
    (with a preflight answered); any other foreign Origin gets 403, even on GET."""
    infer = f"{server.url}/v2/models/echo/infer"
    plain = httpx.post(infer, json=TEXT)
    assert "access-control-allow-origin" not in plain.headers
    app_origin = {"origin": "https://app.example.com"}
    preflight = httpx.options(
        infer, headers={**app_origin, "access-control-request-method": "POST"}
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    allowed = httpx.post(infer, json=TEXT, headers=app_origin)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    refused = httpx.get(f"{server.url}/v1/models", headers={"origin": EVIL})
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
