"""Open Inference Protocol v2 endpoints, over loopback, with real replica processes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.serving.conftest import python_spec, start_gateway


@pytest.fixture(scope="module")
def echo_and_sum() -> Iterator[str]:
    server = start_gateway(python_spec("echo", "Echo"), python_spec("sum", "Sum"))
    yield server.url
    server.stop()


def test_health_and_metadata(echo_and_sum: str) -> None:
    """Liveness, readiness, server and model metadata follow OIP v2."""
    url = echo_and_sum
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    server = httpx.get(f"{url}/v2").json()
    assert server["name"] == "aiscale" and "binary_tensor_data" in server["extensions"]
    meta = httpx.get(f"{url}/v2/models/sum").json()
    assert meta["name"] == "sum" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, -1]}]
    assert meta["outputs"] == [{"name": "sum", "datatype": "FP64", "shape": [-1]}]
    assert httpx.get(f"{url}/v2/models/sum/ready").json() == {"name": "sum", "ready": True}
    assert httpx.get(f"{url}/v2/models/sum/versions/1/ready").status_code == 200


def test_infer_json_tensors(echo_and_sum: str) -> None:
    """JSON tensors in, one output row per input row out, with the request id echoed."""
    url = echo_and_sum
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "input", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}
        ],
    }
    response = httpx.post(f"{url}/v2/models/sum/infer", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert (
        result["id"] == "req-1" and result["model_name"] == "sum" and result["model_version"] == "1"
    )
    assert result["outputs"] == [
        {"name": "sum", "datatype": "FP64", "shape": [2], "data": [6.0, 15.0]}
    ]
    assert response.headers["x-request-id"]

    nested = {
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [[1.5, 2.5]]}]
    }
    assert httpx.post(f"{url}/v2/models/sum/versions/1/infer", json=nested).json()["outputs"][0][
        "data"
    ] == [4.0]

    text = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    echoed = httpx.post(f"{url}/v2/models/echo/infer", json=text).json()
    assert echoed["outputs"][0]["data"] == ["a", "b"]


def test_tritonclient_binary_and_json(echo_and_sum: str) -> None:
    """The real Triton HTTP client works, with binary tensors and with JSON tensors."""
    client = triton.InferenceServerClient(echo_and_sum.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sum")
    metadata = client.get_model_metadata("sum")
    assert metadata["inputs"][0]["name"] == "input"

    values = np.arange(12, dtype=np.float64).reshape(4, 3)
    for binary in (True, False):
        tensor = triton.InferInput("input", list(values.shape), "FP64")
        tensor.set_data_from_numpy(values, binary_data=binary)
        result = client.infer("sum", [tensor])
        np.testing.assert_allclose(result.as_numpy("sum"), values.sum(axis=1))

    texts = np.array([b"hello", "wörld".encode()], dtype=np.object_)
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=True)
    out = client.infer(
        "echo", [tensor], outputs=[triton.InferRequestedOutput("text", binary_data=True)]
    )
    assert [v.decode() for v in out.as_numpy("text")] == ["hello", "wörld"]
    client.close()
