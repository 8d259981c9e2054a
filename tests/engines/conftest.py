"""Engine fixtures: an event loop of its own in a thread, so that one engine replica (a real
llama.cpp process with the bundled SmolLM2) serves every test of a module while each test
talks to it over HTTP from the test's own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aiscale.engines.models import locate_model
from aiscale.engines.spec import EngineSpec

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread; ``run`` waits for a coroutine on it.

    Engine processes, their pools and watcher tasks belong to one loop for their whole
    life, longer than one test's ``asyncio.run``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        self.loop.close()


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return locate_model("smollm2")


def smollm2_spec(**overrides: Any) -> EngineSpec:
    """The engine defaults for this 2-core machine: 2 threads, 4 slots of 2048 tokens."""
    settings: dict[str, Any] = {
        "kind": "llamacpp",
        "model": str(locate_model("smollm2")),
        "served_model_name": "smollm2",
        "context_window": 2048,
        "parallel": 4,
        "threads": 2,
        "max_output_tokens": 256,
        "startup_timeout_s": 60.0,
    }
    settings.update(overrides)
    return EngineSpec(**settings)
