"""The sentence-transformers runtime on the bundled all-MiniLM-L6-v2 folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiscale.errors import InvalidInput, ModelLoadError
from aiscale.model import text_embedding_schema
from aiscale.runtimes import load_model
from tests.runtimes.conftest import MIXED_TEXTS


@pytest.mark.usefixtures("one_torch_thread")
def test_embeddings_equal_the_library_and_come_one_row_per_item(
    minilm_path: Path, reference_encoder: Any
) -> None:
    """Text in, a unit float32 row per item out, equal to encode(normalize_embeddings=True);
    the schema's width is read from the model; an empty batch gives zero rows."""
    model = load_model("sentence-transformers", str(minilm_path))
    assert model.schema.outputs[0].shape == (-1,)  # unknown until loaded
    model.load()
    assert model.schema == text_embedding_schema(384)
    out = model.predict(MIXED_TEXTS)
    assert isinstance(out, np.ndarray)
    assert out.shape == (len(MIXED_TEXTS), 384)
    assert out.dtype == np.float32
    expected = reference_encoder.encode(MIXED_TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert model.predict([]).shape == (0, 384)
    with pytest.raises(InvalidInput) as caught:
        model.predict(["fine", 42])
    assert caught.value.field == "text"


def test_missing_folder_is_a_model_load_error(tmp_path: Path) -> None:
    """A folder that does not exist, or holds no model, fails load() on field ``uri``."""
    for uri in (str(tmp_path / "missing"), str(tmp_path)):
        model = load_model("sentence-transformers", uri)
        with pytest.raises(ModelLoadError) as caught:
            model.load()
        assert caught.value.field == "uri"
