"""The ``python`` runtime: a user's own :class:`~aiscale.model.Model` subclass, by import path.

The uri is ``package.module:ClassName`` (the module must be importable in the replica
process). The class is instantiated with the deployment's config and returned as it is;
its ``load()`` is left to the replica. This module must never call ``load()`` or
``predict()`` itself, and never executes anything but the import the uri names.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from aiscale.errors import ModelLoadError
from aiscale.model import Model


def load_python_class(uri: str, config: Mapping[str, Any] | None = None) -> Model:
    """Import ``module:Class`` and return ``Class(config)``.

    Raises ``ModelLoadError`` (field ``uri``) when the uri is not of that form, the module
    cannot be imported, it has no such attribute, the attribute is not a ``Model``
    subclass, or the constructor raises.
    """
    module_name, sep, attribute = uri.partition(":")
    if not sep or not module_name or not attribute:
        raise ModelLoadError(
            f"python model uri {uri!r} is not of the form 'package.module:ClassName'", field="uri"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while importing
        raise ModelLoadError(
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}", field="uri"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ModelLoadError(
                f"module {module_name!r} has no attribute {attribute!r}", field="uri"
            ) from exc
    if not isinstance(target, type) or not issubclass(target, Model):
        raise ModelLoadError(f"{uri!r} is not a subclass of aiscale.model.Model", field="uri")
    if getattr(target, "__abstractmethods__", None):
        missing = ", ".join(sorted(target.__abstractmethods__))
        raise ModelLoadError(f"{uri!r} does not implement {missing}", field="uri")
    try:
        return target(config)
    except Exception as exc:  # the user's constructor may raise anything
        raise ModelLoadError(
            f"{uri!r}({dict(config or {})!r}) raised {type(exc).__name__}: {exc}", field="uri"
        ) from exc
