"""Shared fixtures: an isolated environment for every test (httpx's clean_environ)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def clean_environ() -> Iterator[None]:
    """Each test sees the environment without AISCALE_* settings leaking in or out."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("AISCALE_")]:
        del os.environ[key]
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    yield
    os.environ.clear()
    os.environ.update(saved)
