"""Triton's OIP v2 extensions that tritonclient calls (model configuration, repository index,
statistics) and OpenAI's ``GET /v1/models/{id}``, driven by the real clients."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from aiscale.serving import BatchingSettings
from tests.serving.conftest import python_spec, start_gateway


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = start_gateway(
        python_spec("sum", "Sum", batching=BatchingSettings(max_batch_size=8)),
        python_spec("echo", "Echo"),
    )
    yield server.url
    server.stop()


@pytest.fixture
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(url.removeprefix("http://"))
    yield connection
    connection.close()


def test_model_config(client: triton.InferenceServerClient) -> None:
    """The configuration names inputs and outputs with Triton types and per-item dims."""
    config = client.get_model_config("sum")
    assert config["name"] == "sum" and config["max_batch_size"] == 8
    assert config["platform"] == "aiscale-python" and config["backend"] == "python"
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP64", "dims": [-1]}]
    assert config["output"] == [
        {"name": "sum", "data_type": "TYPE_FP64", "dims": [1], "reshape": {"shape": []}}
    ]
    echo = client.get_model_config("echo", model_version="1")
    assert echo["input"][0]["data_type"] == "TYPE_STRING"
    with pytest.raises(InferenceServerException, match="no deployment named 'nope'"):
        client.get_model_config("nope")


def test_repository_index(client: triton.InferenceServerClient, url: str) -> None:
    """Every deployed version is listed READY; ``{"ready": true}`` is accepted."""
    assert client.get_model_repository_index() == [
        {"name": "echo", "version": "1", "state": "READY", "reason": ""},
        {"name": "sum", "version": "1", "state": "READY", "reason": ""},
    ]
    ready = httpx.post(f"{url}/v2/repository/index", json={"ready": True})
    assert ready.status_code == 200 and len(ready.json()) == 2
    bad = httpx.post(f"{url}/v2/repository/index", json={"ready": "maybe"})
    assert bad.status_code == 400 and bad.headers["x-aiscale-error-field"] == "ready"


def test_inference_statistics(client: triton.InferenceServerClient) -> None:
    """Counts and durations follow the requests served: successes, failures, queue, model."""
    tensor = triton.InferInput("input", [2, 3], "FP64")
    tensor.set_data_from_numpy(np.arange(6, dtype=np.float64).reshape(2, 3))
    result = client.infer("sum", [tensor])
    assert result.as_numpy("sum").tolist() == [3.0, 12.0]
    wrong = triton.InferInput("input", [1, 2, 2], "FP64")
    wrong.set_data_from_numpy(np.ones((1, 2, 2)))
    with pytest.raises(InferenceServerException):
        client.infer("sum", [wrong])
    stats = client.get_inference_statistics("sum")
    (entry,) = stats["model_stats"]
    assert (entry["name"], entry["version"]) == ("sum", "1")
    assert entry["inference_count"] == 2 and entry["execution_count"] >= 1
    inference = entry["inference_stats"]
    assert inference["success"]["count"] == 1 and inference["success"]["ns"] > 0
    assert inference["fail"]["count"] == 1 and inference["fail"]["ns"] > 0
    assert inference["queue"]["count"] == 2 and inference["queue"]["ns"] >= 0
    assert inference["compute_infer"]["count"] == entry["execution_count"]
    assert inference["compute_infer"]["ns"] > 0
    assert entry["last_inference"] > 1_600_000_000_000  # unix milliseconds
    one = client.get_inference_statistics("sum", model_version="1")
    assert one["model_stats"][0]["inference_count"] == 2
    every = client.get_inference_statistics()
    assert [s["name"] for s in every["model_stats"]] == ["sum", "echo"]
    with pytest.raises(InferenceServerException, match="version '9' of 'sum' is not deployed"):
        client.get_inference_statistics("sum", model_version="9")


def test_openai_model_retrieve(url: str) -> None:
    """``models.retrieve`` gives the Model object; an unknown id is the SDK's NotFoundError."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        model = client.models.retrieve("echo")
        assert (model.id, model.object, model.owned_by) == ("echo", "model", "aiscale")
        with pytest.raises(openai.NotFoundError, match="no deployment named 'nope'") as caught:
            client.models.retrieve("nope")
    assert caught.value.body == {
        "message": "no deployment named 'nope'",
        "type": "NotFound",
        "param": "model",
        "code": None,
    }
