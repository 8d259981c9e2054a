"""Shared fixtures: an isolated environment for every test (httpx's clean_environ)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture
def no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop driven by a ``ManualClock`` must wait on that clock only: a real
    ``asyncio.sleep`` with a delay in the test's own thread fails the test. Servers that
    other tests left running in their own threads keep their real sleeps."""
    real_sleep = asyncio.sleep
    test_thread = threading.current_thread()

    async def zero_only(delay: float, result: Any = None) -> Any:
        if threading.current_thread() is not test_thread:
            return await real_sleep(delay, result)
        assert delay == 0, f"slept {delay} s on the event loop's clock"
        return await real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", zero_only)
