"""The bundled default model served end to end, checked against the runtime called directly."""

from __future__ import annotations

import numpy as np
import openai

from aiscale.runtimes import load_model
from aiscale.serving import DeploymentSpec
from tests.serving.conftest import ServerFactory


def test_minilm_embeddings_match_direct_call(serve: ServerFactory) -> None:
    """/v1/embeddings on `minilm` gives the same unit vectors as the model in process."""
    spec = DeploymentSpec(
        name="minilm", model="minilm", version="1", runtime="minilm", uri="bundled", num_threads=1
    )
    url = serve(spec).url
    texts = ["A man is eating food.", "The new movie is awesome", "How do I reset my password?"]
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        served = np.array(
            [d.embedding for d in client.embeddings.create(model="minilm", input=texts).data]
        )
    model = load_model("minilm", "bundled", {"num_threads": 1})
    model.load()
    direct = np.asarray(model.predict(texts))
    assert served.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, direct, atol=1e-5)
