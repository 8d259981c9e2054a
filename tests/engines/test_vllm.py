"""vLLM engines as replicas: the arguments vLLM gets, and the process contract (start on a
port the kernel picks, healthy, answering, replaced after ``kill -9``, drained and stopped
with its whole session, a bad model refused with its cause).

vLLM needs a GPU and is not installed on our CPU machines, so the contract runs against a
stand-in server (``vllm_standin.py``) that takes vLLM's arguments and behaves like its
OpenAI server at the process level; the same tests run against real vLLM where it is
importable and ``TEST_VLLM_MODEL`` names a local model folder, and are skipped
otherwise, naming why.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiscale.engines.metrics import parse_engine_metrics
from aiscale.engines.process import EngineHandle
from aiscale.engines.spec import EngineSpec
from aiscale.engines.vllm import VllmBackend, vllm_arguments
from aiscale.errors import ModelLoadError
from aiscale.replicas.pool import ReplicaPool
from tests.engines.conftest import LoopThread
from tests.polling import wait_for

STANDIN = "tests.engines.vllm_standin"


#: The model folder real vLLM serves in these tests (read once, at collection).
REAL_VLLM_MODEL = (
    os.environ.get("TEST_VLLM_MODEL") if importlib.util.find_spec("vllm") is not None else None
)


@pytest.fixture(
    params=[
        "standin",
        pytest.param(
            "vllm",
            marks=pytest.mark.skipif(
                REAL_VLLM_MODEL is None,
                reason="real vLLM needs the vllm package (GPU machines only; not installed "
                "here) and TEST_VLLM_MODEL naming a local model folder",
            ),
        ),
    ],
    scope="module",
)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """How to build a backend: the stand-in with a model folder of its own, or real vLLM."""
    if request.param == "standin":
        model = tmp_path_factory.mktemp("model")
        (model / "config.json").write_text("{}")
        return {"entrypoint": STANDIN, "model": str(model), "timeout_s": 30.0}
    return {"entrypoint": None, "model": REAL_VLLM_MODEL, "timeout_s": 600.0}


def _backend(target: dict[str, Any], **overrides: Any) -> VllmBackend:
    settings: dict[str, Any] = {
        "kind": "vllm",
        "model": target["model"],
        "served_model_name": "chat",
        "context_window": 1024,
        "parallel": 8,
        "startup_timeout_s": target["timeout_s"],
    }
    settings.update(overrides)
    return VllmBackend(EngineSpec(**settings), entrypoint=target["entrypoint"])


@pytest.fixture(scope="module")
def pool(target: dict[str, Any], loop_thread: LoopThread) -> Iterator[ReplicaPool[EngineHandle]]:
    backend = _backend(target)
    engines: ReplicaPool[EngineHandle] = ReplicaPool(backend.spec.replica_spec(), backend)
    loop_thread.run(engines.start(1), timeout_s=target["timeout_s"])
    yield engines
    loop_thread.run(engines.stop(drain_timeout_s=10.0))


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_vllm_gets_prefix_caching_loopback_port_0_and_its_devices() -> None:
    """The server arguments: the model and served name, 127.0.0.1 port 0, prefix caching,
    the window as --max-model-len, the slots as --max-num-seqs, tensor parallel over the
    lease's devices unless the config says, and extra args as flags."""
    spec = EngineSpec("vllm", "/models/llama", "chat", context_window=4096, parallel=16,
                      extra_args={"enforce_eager": True, "gpu_memory_utilization": 0.8})
    arguments = vllm_arguments(spec, num_devices=2)
    pairs = dict(zip(arguments[::1], arguments[1:], strict=False))
    assert pairs["--model"] == "/models/llama" and pairs["--served-model-name"] == "chat"
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "0"
    assert pairs["--max-model-len"] == "4096" and pairs["--max-num-seqs"] == "16"
    assert pairs["--tensor-parallel-size"] == "2" and pairs["--gpu-memory-utilization"] == "0.8"
    assert "--enable-prefix-caching" in arguments and "--enforce-eager" in arguments
    assert "--tensor-parallel-size" not in vllm_arguments(spec, num_devices=1)
    assert "--no-enforce-eager" in vllm_arguments(
        EngineSpec("vllm", "/m", "c", extra_args={"enforce_eager": False})
    )


def test_a_ready_vllm_engine_answers_on_the_port_it_announced(
    pool: ReplicaPool[EngineHandle],
) -> None:
    """``spawn`` finds the port from the server's start line and returns once ``/health``
    is 200; the server got prefix caching and the window and slots of the spec."""
    engine = pool.replicas()[0].handle
    assert engine.url.startswith("http://127.0.0.1:") and not engine.url.endswith(":0")
    with httpx.Client(base_url=engine.url, timeout=60.0) as client:
        assert client.get("/health").status_code == 200
        answer = client.post("/v1/chat/completions", json=CHAT).json()
    assert answer["model"] == "chat"
    if "prefix_caching" in answer:  # the stand-in reports what it was started with
        assert answer["prefix_caching"] is True
        assert (answer["max_model_len"], answer["max_num_seqs"]) == (1024, 8)


def test_a_vllm_engine_killed_with_minus_9_is_replaced(pool: ReplicaPool[EngineHandle]) -> None:
    old = pool.replicas()[0].handle
    os.kill(old.pid, signal.SIGKILL)
    wait_for(lambda: pool.num_replaced == 1 and pool.num_ready == 1, 120.0, "a replacement")
    new = pool.replicas()[0].handle
    assert new.pid != old.pid and new.url != old.url
    with httpx.Client(timeout=60.0) as client:
        assert client.post(f"{new.url}/v1/chat/completions", json=CHAT).status_code == 200


def test_stop_drains_then_ends_the_session(
    target: dict[str, Any], loop_thread: LoopThread
) -> None:
    """A request in progress is answered before the engine ends; then its pid is gone."""
    backend = _backend(target)
    engines: ReplicaPool[EngineHandle] = ReplicaPool(backend.spec.replica_spec(), backend)
    loop_thread.run(engines.start(1), timeout_s=target["timeout_s"])
    engine = engines.replicas()[0].handle
    answers: list[int] = []

    def call() -> None:
        with httpx.Client(timeout=60.0) as client:
            answers.append(client.post(f"{engine.url}/v1/chat/completions", json=CHAT).status_code)

    caller = threading.Thread(target=call)
    caller.start()
    with httpx.Client(timeout=10.0) as client:
        wait_for(
            lambda: parse_engine_metrics(client.get(f"{engine.url}/metrics").text, "vllm")
            .num_running,
            20.0,
            "the request to start",
        )
    loop_thread.run(engines.stop(drain_timeout_s=30.0))
    caller.join(30.0)
    assert answers == [200]
    with pytest.raises(ProcessLookupError):
        os.kill(engine.pid, 0)


def test_a_model_vllm_cannot_load_fails_the_start_with_its_error(
    target: dict[str, Any], loop_thread: LoopThread, tmp_path: Path
) -> None:
    """A folder that is no model: ``ModelLoadError`` with the server's error line; a path
    that does not exist: refused before any process starts."""
    for model, cause in ((tmp_path, "config.json"), (tmp_path / "none", "does not exist")):
        backend = _backend(target, model=str(model))
        engines: ReplicaPool[EngineHandle] = ReplicaPool(backend.spec.replica_spec(), backend)
        with pytest.raises(ModelLoadError, match=cause):
            loop_thread.run(engines.start(1), timeout_s=target["timeout_s"])
        assert engines.replicas() == []
