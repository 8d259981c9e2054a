"""aiscale: serve any Python model fast, release it safely, scale it and learn from production."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiscale.errors import AiscaleError
from aiscale.model import Model, Schema, TensorSpec

if TYPE_CHECKING:
    from aiscale.client import Client
    from aiscale.programmatic import ServerHandle, serve

__version__ = "0.1.0"
__all__ = [
    "AiscaleError",
    "Client",
    "Model",
    "Schema",
    "ServerHandle",
    "TensorSpec",
    "__version__",
    "serve",
]

#: Loaded on first use, so that ``import aiscale`` (every replica process does) stays light.
_LAZY = {
    "Client": "aiscale.client",
    "serve": "aiscale.programmatic",
    "ServerHandle": "aiscale.programmatic",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aiscale' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
