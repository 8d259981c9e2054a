"""Each family of routes answers errors in its own protocol's shape: OIP v2
``{"error": "<message>"}`` (type and field in ``x-aiscale-error-*`` headers), OpenAI
``{"error": {"message", "type", "param", "code"}}``, admin ``{"error": {"type", "message",
"field"}}`` — so tritonclient and the openai SDK can show every message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.serving import GatewaySettings
from tests.serving.conftest import python_spec, start_gateway


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A gateway with API keys on (``sum`` and ``fail``); yields its URL and an inference key."""
    folder: Path = tmp_path_factory.mktemp("protocol_errors")
    registry = SqlRegistry.open(f"sqlite:///{folder / 'registry.db'}")
    key = registry.create_key("app", frozenset({"inference", "admin"}))[0]
    control = RegistryControl(registry, FsspecArtifactStore(folder / "artifacts"))
    gateway = start_gateway(
        python_spec("sum", "Sum"),
        python_spec("fail", "Fail"),
        settings=GatewaySettings(drain_timeout_s=5.0),
        control=control,
    )
    yield gateway.url, key
    gateway.stop()
    registry.close()


def triton_client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"))


def sum_input(shape: list[int]) -> triton.InferInput:
    tensor = triton.InferInput("input", shape, "FP64")
    tensor.set_data_from_numpy(np.ones(shape, dtype=np.float64), binary_data=False)
    return tensor


def auth(key: str | None) -> dict[str, str] | None:
    return {"authorization": f"Bearer {key}"} if key else None


def triton_error(
    url: str, key: str | None, model: str, shape: list[int]
) -> InferenceServerException:
    client = triton_client(url)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [sum_input(shape)], headers=auth(key))
    finally:
        client.close()
    error: InferenceServerException = caught.value
    return error


@pytest.mark.parametrize(
    ("model", "shape", "use_key", "status", "needle"),
    [
        ("nope", [1, 2], True, "404", "no deployment named 'nope'"),
        ("sum", [1, 2, 2], True, "400", "input 'input' has shape [-1, -1], got [1, 2, 2]"),
        ("sum", [1, 2], False, "401", "an API key is required"),
    ],
)
def test_tritonclient_shows_every_error(
    server: tuple[str, str], model: str, shape: list[int], use_key: bool, status: str, needle: str
) -> None:
    """A wrong model name, a wrong shape and a missing key each print as their message."""
    url, key = server
    error = triton_error(url, key if use_key else None, model, shape)
    printed = str(error)  # raised TypeError while the body's error was an object
    assert needle in printed and printed.startswith(f"[{status}] ")
    assert isinstance(error.message(), str) and needle in error.message()
    assert error.status() == status


def test_oip_v2_error_is_the_protocols_string_with_type_in_headers(
    server: tuple[str, str],
) -> None:
    """The body is exactly ``{"error": message}``; type and field travel in headers."""
    url, key = server
    body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2]}]}
    response = httpx.post(f"{url}/v2/models/sum/infer", json=body, headers=auth(key))
    assert response.status_code == 400
    assert response.json() == {"error": "input 'input' has 2 values but shape [1, 3] needs 3"}
    assert response.headers["x-aiscale-error-type"] == "InvalidInput"
    assert response.headers["x-aiscale-error-field"] == "inputs[0].data"
    missing = httpx.get(f"{url}/v2/models/nope", headers=auth(key))
    assert missing.status_code == 404 and missing.json() == {"error": "no deployment named 'nope'"}
    assert missing.headers["x-aiscale-error-type"] == "NotFound"
    assert missing.headers["x-aiscale-error-field"] == "model"
    unauthorized = httpx.get(f"{url}/v2")
    assert unauthorized.status_code == 401 and set(unauthorized.json()) == {"error"}
    assert isinstance(unauthorized.json()["error"], str)
    assert unauthorized.headers["x-aiscale-error-type"] == "AuthError"
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    text = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
    failed = httpx.post(f"{url}/v2/models/fail/infer", json=text, headers=auth(key))
    assert failed.status_code == 500
    assert failed.json() == {"error": "ValueError: model failed on purpose"}
    assert failed.headers["x-aiscale-error-type"] == "ValueError"
    assert "x-aiscale-error-field" not in failed.headers


def test_openai_and_admin_error_shapes(server: tuple[str, str]) -> None:
    """``/v1`` errors are ``{"error": {"message", "type", "param", "code"}}``, which the SDK
    raises as its typed errors with our message; admin errors keep aiscale's shape."""
    url, key = server
    response = httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, headers=auth(key))
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "model must name a deployment",
            "type": "InvalidInput",
            "param": "model",
            "code": None,
        }
    }
    with (
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError, match="unknown or revoked API key") as exc,
    ):
        client.models.list()
    assert exc.value.body == {
        "message": "unknown or revoked API key",
        "type": "AuthError",
        "param": "authorization",
        "code": None,
    }
    # Admin and unknown paths keep ``{"error": {"type", "message", "field"}}``.
    response = httpx.get(f"{url}/admin/deployments/nope", headers=auth(key))
    assert response.status_code == 404
    assert response.json() == {
        "error": {"type": "NotFound", "message": "no deployment named 'nope'", "field": "model"}
    }
    assert "x-aiscale-error-type" not in response.headers
    nowhere = httpx.get(f"{url}/nowhere")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["field"] == "path"
