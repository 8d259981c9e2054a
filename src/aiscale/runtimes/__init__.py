"""Runtimes: how a model is built from a registry entry's ``runtime`` name and ``uri``.

:func:`load_model` turns ``(runtime, uri, config)`` into a :class:`~aiscale.model.Model`
object without loading weights: the replica process calls ``load()`` on it. Each runtime
imports its heavy library (torch, scikit-learn, onnxruntime, ...) inside ``load()`` only,
so importing this package, or building a model object in the gateway, stays cheap. This
package must never serve requests, batch, or touch the network.

    runtime                 uri                                  item in -> item out
    python                  package.module:ClassName             whatever the class declares
    sklearn                 joblib/pickle file of an estimator   FP64 vector -> label/value/probas
    onnx                    .onnx file                           graph input(s) -> first output
    sentence-transformers   local model folder                   text -> unit float32 vector
    minilm                  "" / "bundled", or a model folder    text -> unit float32 vector (384)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiscale.errors import InvalidInput
from aiscale.model import Model
from aiscale.runtimes.minilm import MiniLmModel
from aiscale.runtimes.onnx import OnnxModel
from aiscale.runtimes.python_class import load_python_class
from aiscale.runtimes.sentence_transformers import SentenceTransformerModel
from aiscale.runtimes.sklearn import SklearnModel

__all__ = [
    "DEFAULT_RUNTIME",
    "DEFAULT_URI",
    "RUNTIMES",
    "MiniLmModel",
    "OnnxModel",
    "SentenceTransformerModel",
    "SklearnModel",
    "load_model",
    "load_python_class",
]

#: Every runtime name :func:`load_model` accepts.
RUNTIMES: tuple[str, ...] = ("python", "sklearn", "onnx", "sentence-transformers", "minilm")
#: The model served when nothing else is configured: all-MiniLM-L6-v2, bundled.
DEFAULT_RUNTIME = "minilm"
DEFAULT_URI = "bundled"


def load_model(runtime: str, uri: str, config: Mapping[str, Any] | None = None) -> Model:
    """Build (not load) the model object for ``runtime`` and ``uri``.

    Raises ``InvalidInput`` (field ``runtime``) for an unknown runtime name,
    ``ConfigError`` (field ``config.<key>``) for a config key the runtime does not know,
    and ``ModelLoadError`` (field ``uri``) when a ``python`` class cannot be imported or
    built. The other runtimes check their uri in ``load()``.
    """
    if runtime == "python":
        return load_python_class(uri, config)
    if runtime == "sklearn":
        return SklearnModel(uri, config)
    if runtime == "onnx":
        return OnnxModel(uri, config)
    if runtime == "sentence-transformers":
        return SentenceTransformerModel(uri, config)
    if runtime == "minilm":
        return MiniLmModel(uri, config)
    raise InvalidInput(
        f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}", field="runtime"
    )
