"""``/openapi.json`` describes every route the server answers, and the server keeps to it:
schemathesis sends generated requests to a real gateway on loopback and finds no 5xx and no
answer outside the document (status, content type, headers, body schema)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aiscale.serving import GatewaySettings
from aiscale.serving.openapi import OPERATIONS
from tests.serving.conftest import python_spec, start_gateway

#: Admin operations that change what the server runs are left out of the fuzzing: a generated
#: deployment or scale would start real replica processes. Their bodies are still documented.
STATE_CHANGING = {
    ("POST", "/admin/deployments"),
    ("DELETE", "/admin/deployments/{name}"),
    ("POST", "/admin/deployments/{name}/scale"),
    ("POST", "/admin/deployments/{name}/rollout"),
    ("POST", "/admin/deployments/{name}/rollout/{action}"),
    ("POST", "/admin/deployments/{name}/rollback"),
    ("PUT", "/admin/deployments/{name}/split"),
    ("POST", "/admin/deployments/{name}/versions"),
    ("DELETE", "/admin/deployments/{name}/versions/{version}"),
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = start_gateway(
        python_spec("sum", "Sum"),
        python_spec("echo", "Echo"),
        settings=GatewaySettings(max_body_bytes=65536, drain_timeout_s=5.0),
    )
    yield server.url
    server.stop()


def test_document_lists_every_route(url: str) -> None:
    """Every operation of the table is in the document, as OpenAPI 3.1 with its errors."""
    document = httpx.get(f"{url}/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    listed = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert listed == {(op.method.upper(), op.path) for op in OPERATIONS}
    for path in ("/v2/models/{model}/config", "/v2/repository/index", "/v1/models/{model}",
                 "/v2/models/{model}/versions/{version}/stats", "/admin/deployments/{name}"):
        assert any(p == path for _, p in listed), path
    infer = document["paths"]["/v2/models/{model}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferRequest"
    }
    assert infer["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OipV2Error"
    }
    assert document["components"]["schemas"]["OipV2Error"]["properties"]["error"] == {
        "title": "Error",
        "type": "string",
    }
    # The admin bodies are the models that validate them: the config file's constraints.
    replicas = document["components"]["schemas"]["DeploymentConfig"]["properties"]["replicas"]
    assert (replicas["minimum"], replicas["maximum"]) == (0, 256)


def test_docs_page_shows_every_route(url: str) -> None:
    """``/docs`` is a self-contained HTML page naming each route and schema."""
    page = httpx.get(f"{url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text  # nothing to fetch from a CDN
    for op in OPERATIONS:
        assert f"<code>{op.path}</code>" in page.text, op.path
    assert 'id="InferRequest"' in page.text and 'id="ModelStats"' in page.text


@pytest.mark.timeout(300)
def test_server_keeps_to_its_document(url: str) -> None:
    """Generated requests to every operation but the state-changing admin ones: no 5xx, and
    every answer's status, content type, headers and body are the documented ones."""
    schema = schemathesis.openapi.from_url(
        f"{url}/openapi.json", config=schemathesis.Config(), timeout=10
    )
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document loads without schema errors
        operations.append(result.ok())
    chosen = [op for op in operations if (op.method.upper(), op.path) not in STATE_CHANGING]
    # schemathesis leaves out the operation that served it the document.
    wanted = {(op.method.upper(), op.path) for op in OPERATIONS} - STATE_CHANGING
    assert {(op.method.upper(), op.path) for op in chosen} == wanted - {("GET", "/openapi.json")}
    # Each operation with a model in its path also runs against the real deployments (and
    # their version "1"), so generated bodies reach the parsers, not only the 404.
    strategies = [op.as_strategy() for op in chosen]
    for op in chosen:
        names = {p.name for p in op.path_parameters}
        for model in ("sum", "echo"):
            fixed = {k: v for k, v in {"model": model, "name": model, "version": "1"}.items()
                     if k in names}
            if fixed:
                strategies.append(op.as_strategy(path_parameters=fixed))
    strategy = st.one_of(strategies)

    @settings(
        max_examples=600,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(base_url=url, checks=CHECKS, timeout=10)

    check()
