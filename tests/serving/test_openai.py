"""OpenAI-compatible endpoints, driven by the official ``openai`` client as a real client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from tests.models import HashEmbed
from tests.serving.conftest import python_spec, start_gateway


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = start_gateway(python_spec("embed", "HashEmbed"), python_spec("echo", "Echo"))
    yield server.url
    server.stop()


def expected(texts: list[str]) -> np.ndarray:
    return np.asarray(HashEmbed().predict(texts))


def test_openai_client_embeddings(url: str) -> None:
    """The openai package (base64 by default, and float) gets the model's vectors in order."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        check_embeddings(client)


def check_embeddings(client: openai.OpenAI) -> None:
    texts = ["first sentence", "second one", "third"]
    result = client.embeddings.create(model="embed", input=texts)
    assert result.model == "embed" and [d.index for d in result.data] == [0, 1, 2]
    np.testing.assert_allclose(
        np.array([d.embedding for d in result.data]), expected(texts), rtol=1e-6
    )
    single = client.embeddings.create(model="embed", input="solo", encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, expected(["solo"])[0], rtol=1e-6)
    assert [m.id for m in client.models.list()] == ["embed", "echo"]


def test_openai_client_errors(url: str) -> None:
    """Unknown deployments and non-embedding models are clear client errors."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError, match="no deployment named 'nope'"):
            client.embeddings.create(model="nope", input="x")
        with pytest.raises(openai.BadRequestError, match="does not produce embeddings"):
            client.embeddings.create(model="echo", input="x")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": "x"}, "model"),
        ({"model": "embed"}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": [[1, 2, 3]]}, "input"),
        ({"model": "embed", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "embed", "input": "x", "dimensions": 3}, "dimensions"),
    ],
)
def test_bad_embeddings_bodies(url: str, body: dict[str, object], field: str) -> None:
    """Each malformed body is a 400 whose JSON error names the field."""
    response = httpx.post(f"{url}/v1/embeddings", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
