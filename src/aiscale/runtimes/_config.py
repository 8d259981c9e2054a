"""Checks of a runtime's ``config`` mapping, shared by the runtimes that take settings.

A runtime knows its keys; an unknown key is an error (a typo must not be ignored
silently). Pure: no I/O. Never used for the ``python`` runtime, whose config belongs to
the user's class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiscale.errors import ConfigError


def check_keys(config: Mapping[str, Any], allowed: frozenset[str], runtime: str) -> None:
    """Raise ``ConfigError`` (field ``config.<key>``) for the first key not in ``allowed``."""
    unknown = sorted(set(config) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(
            f"unknown {runtime} config key {unknown[0]!r} (known: {known})",
            field=f"config.{unknown[0]}",
        )


def optional_positive_int(config: Mapping[str, Any], key: str) -> int | None:
    """``config[key]`` when set, after checking it is an integer of at least 1."""
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, not {value!r}", field=f"config.{key}")
    return value
