"""The bundled minilm runtime: the same embeddings as sentence-transformers, loaded
without importing transformers, and the length-sorted sub-batching it relies on."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiscale.errors import InvalidInput, ModelLoadError
from aiscale.model import Model, text_embedding_schema
from aiscale.runtimes import load_model
from aiscale.runtimes.minilm import split_by_length
from tests.runtimes.conftest import MIXED_TEXTS


@pytest.fixture(scope="module")
def minilm() -> Iterator[Model]:
    """The bundled model, loaded once, on one torch thread (config ``num_threads``)."""
    import torch

    saved = torch.get_num_threads()
    model = load_model("minilm", "bundled", {"num_threads": 1})
    model.load()
    yield model
    torch.set_num_threads(saved)


def test_num_threads_config_sets_torch_threads(minilm: Model) -> None:
    """``num_threads`` is applied to torch when the model loads."""
    import torch

    assert torch.get_num_threads() == 1


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1) / norms)


def test_embeddings_match_sentence_transformers(minilm: Model, reference_encoder: Any) -> None:
    """Mean pooling over the mask, then L2 normalisation, truncation at 256 tokens:
    every row has cosine > 0.9999 with SentenceTransformer.encode(normalize=True)."""
    out = minilm.predict(MIXED_TEXTS)
    expected = reference_encoder.encode(MIXED_TEXTS, normalize_embeddings=True)
    assert isinstance(out, np.ndarray)
    assert out.shape == (len(MIXED_TEXTS), 384)
    assert out.dtype == np.float32
    assert _cosines(out, expected).min() > 0.9999
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_batching_and_sorting_do_not_change_any_row(minilm: Model) -> None:
    """A row depends on its own text only: a mixed-length batch (split and reordered
    inside) gives, in input order, the rows each text gets alone."""
    batch = MIXED_TEXTS + MIXED_TEXTS[::-1]
    together = minilm.predict(batch)
    alone = np.concatenate([minilm.predict([text]) for text in MIXED_TEXTS])
    np.testing.assert_allclose(together, np.concatenate([alone, alone[::-1]]), atol=1e-5)


def test_schema_empty_batch_and_non_text_items(minilm: Model) -> None:
    """Schema is text -> FP32 (384,); an empty batch gives zero rows; a non-string item
    is InvalidInput on field ``text``."""
    assert minilm.schema == text_embedding_schema(384)
    assert np.asarray(minilm.predict([])).shape == (0, 384)
    with pytest.raises(InvalidInput) as caught:
        minilm.predict(["fine", None])
    assert caught.value.field == "text"


def test_cold_load_imports_neither_transformers_nor_sentence_transformers() -> None:
    """Cold start: a fresh interpreter loads the model and embeds a text without importing
    transformers or sentence_transformers (their import alone costs seconds)."""
    code = (
        "import sys\n"
        "from aiscale.runtimes import load_model\n"
        "m = load_model('minilm', '')\n"
        "m.load()\n"
        "assert m.predict(['hello']).shape == (1, 384)\n"
        "print(sorted({'transformers', 'sentence_transformers'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_folders_that_are_not_bert_with_mean_pooling_are_refused(
    minilm_path: Path, tmp_path: Path
) -> None:
    """A missing folder, or one whose pooling is not mean pooling, fails load() on ``uri``
    rather than giving embeddings that differ from sentence-transformers'."""
    folder = tmp_path / "max-pooled"
    for name in ("config.json", "sentence_bert_config.json", "modules.json"):
        shutil.copy(minilm_path / name, folder / name if folder.exists() else _mk(folder) / name)
    pooling = json.loads((minilm_path / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    _mk(folder / "1_Pooling").joinpath("config.json").write_text(json.dumps(pooling))
    for uri in (str(tmp_path / "missing"), str(folder)):
        model = load_model("minilm", uri)
        with pytest.raises(ModelLoadError) as caught:
            model.load()
        assert caught.value.field == "uri"


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cost(runs: Sequence[Sequence[int]], lengths: Sequence[int], overhead: int) -> int:
    return sum(overhead + len(run) * max(lengths[i] for i in run) for run in runs)


@pytest.mark.parametrize(
    ("lengths", "overhead", "expected"),
    [
        ([], 256, []),
        ([7], 256, [[0]]),
        ([10, 10, 10, 10], 256, [[0, 1, 2, 3]]),
        ([200, 5, 6, 201], 0, [[1], [2], [0], [3]]),
        ([200, 5, 6, 201], 256, [[1, 2], [0, 3]]),
        ([12, 14, 13, 11], 10_000, [[3, 0, 2, 1]]),
    ],
)
def test_split_by_length_table(
    lengths: list[int], overhead: int, expected: list[list[int]]
) -> None:
    """Uniform lengths stay one batch; far-apart lengths split when the padding saved
    outweighs the overhead of another pass; runs hold indices shortest first."""
    assert split_by_length(lengths, overhead) == expected


@given(
    st.lists(st.integers(min_value=1, max_value=256), max_size=8),
    st.integers(min_value=0, max_value=500),
)
def test_split_by_length_is_an_optimal_partition(lengths: list[int], overhead: int) -> None:
    """Every index appears once, each run is sorted by length, and no split of the sorted
    order into contiguous runs costs less (checked against all 2^(n-1) splits)."""
    runs = split_by_length(lengths, overhead)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    for run in runs:
        assert [lengths[i] for i in run] == sorted(lengths[i] for i in run)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = _cost(runs, lengths, overhead)
    for cuts in itertools.product([False, True], repeat=max(len(order) - 1, 0)):
        candidate: list[list[int]] = [[]] if order else []
        for position, index in enumerate(order):
            if position and cuts[position - 1]:
                candidate.append([])
            candidate[-1].append(index)
        assert best <= _cost(candidate, lengths, overhead)
