"""The ``sentence-transformers`` runtime: any local sentence-transformers model folder.

The uri is the folder. Text in, L2-normalised float32 embedding out
(:func:`~aiscale.model.text_embedding_schema`, width from the model). This is the general
path for any architecture sentence-transformers can load; the bundled default uses the
faster-starting ``minilm`` runtime instead. The library is imported inside ``load()``
only (the import alone takes seconds). Loading uses ``local_files_only``: this module must
never download anything or run code from the model folder.

Config keys: ``num_threads`` (torch intra-op threads; default: leave torch's default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiscale.errors import InvalidInput, ModelLoadError
from aiscale.model import Model, text_embedding_schema
from aiscale.runtimes._config import check_keys, optional_positive_int

_CONFIG_KEYS = frozenset({"num_threads"})


class SentenceTransformerModel(Model):
    """``SentenceTransformer.encode(batch, normalize_embeddings=True)``, one call per batch."""

    def __init__(self, uri: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        check_keys(self.config, _CONFIG_KEYS, "sentence-transformers")
        self.num_threads = optional_positive_int(self.config, "num_threads")
        self.uri = uri
        self.schema = text_embedding_schema(-1)  # the width is known once loaded
        self._model: Any = None

    def load(self) -> None:
        """Load the folder on the CPU; raises ``ModelLoadError``."""
        if not Path(self.uri).is_dir():
            raise ModelLoadError(f"model folder {self.uri!r} does not exist", field="uri")
        import torch
        from sentence_transformers import SentenceTransformer

        threads = self.num_threads
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            model = SentenceTransformer(self.uri, device="cpu", local_files_only=True)
        except Exception as exc:  # the library raises many unrelated types on a bad folder
            raise ModelLoadError(
                f"cannot load {self.uri!r}: {type(exc).__name__}: {exc}", field="uri"
            ) from exc
        dimensions = model.get_embedding_dimension()
        if not isinstance(dimensions, int):
            raise ModelLoadError(f"{self.uri!r} does not declare its embedding width", field="uri")
        model.eval()
        self._model = model
        self.schema = text_embedding_schema(dimensions)

    def predict(self, batch: Sequence[Any]) -> Any:
        """Returns an (n, d) float32 numpy array; ``InvalidInput`` (field ``text``) for an
        item that is not a string."""
        import numpy as np

        if self._model is None:
            raise ModelLoadError("predict called before load", field="uri")
        for item in batch:
            if not isinstance(item, str):
                raise InvalidInput(f"expected a string, got {type(item).__name__}", field="text")
        width = self.schema.outputs[0].shape[0]
        if not batch:
            return np.empty((0, width), dtype=np.float32)
        embeddings = self._model.encode(
            list(batch),
            batch_size=len(batch),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(embeddings, dtype=np.float32)
