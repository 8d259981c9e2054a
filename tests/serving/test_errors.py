"""Every bad input gets a status code and a JSON body naming the problem (no tracebacks)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import httpx
import pytest

from aiscale.serving import BatchingSettings, GatewaySettings
from tests.serving.conftest import ServerFactory, python_spec, start_gateway


def error_of(response: httpx.Response) -> dict[str, object]:
    """An OIP v2 error: ``{"error": message}``, with type and field in the headers."""
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return {
        "type": response.headers["x-aiscale-error-type"],
        "message": body["error"],
        "field": response.headers.get("x-aiscale-error-field"),
    }


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = GatewaySettings(max_body_bytes=4096, drain_timeout_s=5.0)
    server = start_gateway(
        python_spec("sum", "Sum"),
        python_spec("fail", "Fail"),
        python_spec("short", "WrongCount"),
        settings=settings,
    )
    yield server.url
    server.stop()


def sum_body(**override: object) -> dict[str, object]:
    tensor = {"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}
    tensor.update(override)
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("body", "status", "field", "needle"),
    [
        (b"{not json", 400, "body", "not valid JSON"),
        (b"[1, 2]", 400, "body", "JSON object"),
        (b"{}", 400, "inputs", "non-empty list"),
        (sum_body(datatype="INT32"), 400, "inputs[0].datatype", "FP64"),
        (sum_body(shape=[1, 3]), 400, "inputs[0].data", "needs 3"),
        (sum_body(shape=[1, 2, 2], data=[1, 2, 3, 4]), 400, "inputs[0].shape", "shape"),
        (sum_body(name="x"), 400, "inputs[0].name", "unknown input"),
        (sum_body(data=["a", "b"]), 400, "inputs[0].data", "FP64"),
        (sum_body(shape="two"), 400, "inputs[0].shape", "shape"),
        (sum_body(shape=[0, 2], data=[]), 400, "inputs[0].shape", "at least 1"),
    ],
)
def test_bad_oip_bodies(url: str, body: object, status: int, field: str, needle: str) -> None:
    """Malformed JSON, wrong datatype, wrong shape, wrong names: 400 naming the field."""
    content = body if isinstance(body, bytes) else None
    response = httpx.post(
        f"{url}/v2/models/sum/infer", content=content, json=None if content else body
    )
    assert response.status_code == status
    error = error_of(response)
    assert error["field"] == field
    assert needle in str(error["message"])


def test_unknown_model_version_and_path(url: str) -> None:
    """Unknown model, version or endpoint: 404; wrong method: 405 — all JSON."""
    response = httpx.post(f"{url}/v2/models/nope/infer", json=sum_body())
    assert response.status_code == 404 and "nope" in str(error_of(response)["message"])
    response = httpx.post(f"{url}/v2/models/sum/versions/7/infer", json=sum_body())
    assert response.status_code == 404 and error_of(response)["field"] == "version"
    assert httpx.get(f"{url}/nowhere").status_code == 404
    response = httpx.get(f"{url}/v2/models/sum/infer")
    assert response.status_code == 405 and error_of(response)["field"] == "method"


def test_body_too_large(url: str) -> None:
    """A body over the limit is refused with 413 before it is parsed."""
    big = {
        "inputs": [{"name": "input", "shape": [1, 2000], "datatype": "FP64", "data": [1.0] * 2000}]
    }
    response = httpx.post(f"{url}/v2/models/sum/infer", json=big)
    assert response.status_code == 413
    assert error_of(response)["type"] == "PayloadTooLarge"


def test_model_errors_reach_every_caller(url: str) -> None:
    """A model exception is a 500 naming its type; a wrong output count fails, never truncates."""
    text = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    response = httpx.post(f"{url}/v2/models/fail/infer", json=text)
    assert response.status_code == 500
    assert error_of(response)["type"] == "ValueError"
    response = httpx.post(f"{url}/v2/models/short/infer", json=text)
    assert response.status_code == 500
    error = error_of(response)
    assert error["type"] == "OutputCountMismatch" and "1 outputs for 2 inputs" in str(
        error["message"]
    )


def test_queue_full_answers_503_with_retry_after(serve: ServerFactory) -> None:
    """When the bounded queue is full, extra requests get 503 + Retry-After, the rest succeed."""
    spec = python_spec(
        "slow",
        "Slow",
        model_config={"delay_ms": 300},
        batching=BatchingSettings(max_batch_size=1, max_queue=2, max_batch_delay_s=0.0),
    )
    url = serve(spec).url
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda _: client.post(f"{url}/v2/models/slow/infer", json=body), range(8))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 3 and 503 in statuses
    rejected = [r for r in responses if r.status_code == 503]
    for response in rejected:
        assert response.headers["retry-after"] == "1"
        assert "queue full" in str(error_of(response)["message"])
