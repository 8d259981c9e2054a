"""aiscale: serve any Python model fast, release it safely, scale it and learn from production."""

from __future__ import annotations

from aiscale.errors import AiscaleError
from aiscale.model import Model, Schema, TensorSpec

__version__ = "0.1.0"
__all__ = ["AiscaleError", "Model", "Schema", "TensorSpec", "__version__"]
