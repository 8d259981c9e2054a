"""llama.cpp engines as replicas: real engine processes (the bundled SmolLM2 through
``xllamacpp``) under the one ``ReplicaPool``: ready when healthy, answering OpenAI chat,
replaced after ``kill -9``, drained and stopped without an orphan, refusing a bad model with
its cause, and ending with the gateway that started them.

One pool with one engine serves the module (started once, ~1 s); the tests that stop or
break an engine start their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiscale.engines.llamacpp import LlamaCppBackend
from aiscale.engines.metrics import parse_engine_metrics
from aiscale.engines.process import EngineHandle
from aiscale.errors import AiscaleError, ModelLoadError
from aiscale.replicas.pool import ReplicaPool
from tests.engines.conftest import LoopThread, smollm2_spec
from tests.polling import wait_for

CHAT = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Name three colours."}],
    "max_tokens": 8,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def slot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slots")


@pytest.fixture(scope="module")
def pool(loop_thread: LoopThread, slot_dir: Path) -> Iterator[ReplicaPool[EngineHandle]]:
    spec = smollm2_spec(slot_save_dir=str(slot_dir))
    engines: ReplicaPool[EngineHandle] = ReplicaPool(spec.replica_spec(), LlamaCppBackend(spec))
    loop_thread.run(engines.start(1))
    yield engines
    loop_thread.run(engines.stop(drain_timeout_s=10.0))


def _only_engine(pool: ReplicaPool[EngineHandle]) -> EngineHandle:
    replicas = pool.replicas()
    assert len(replicas) == 1
    return replicas[0].handle


def _is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_ready_engine_answers_openai_chat_on_its_loopback_port(
    pool: ReplicaPool[EngineHandle],
) -> None:
    """``spawn`` returns once ``/health`` says ok; the engine answers an OpenAI chat
    completion under the served name with usage, on 127.0.0.1 at a port of its own."""
    engine = _only_engine(pool)
    assert engine.url.startswith("http://127.0.0.1:") and engine.pid == pool.replicas()[0].pid
    info = pool.replicas()[0].info
    assert info.load_s > 0 and info.schema["context_window"] == 2048
    with httpx.Client(base_url=engine.url, timeout=30.0) as client:
        assert client.get("/health").json() == {"status": "ok"}
        answer = client.post("/v1/chat/completions", json=CHAT).json()
    assert answer["model"] == "smollm2" and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"].strip()
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 8


def test_the_engine_runs_with_the_chosen_slots_cache_and_metrics(
    pool: ReplicaPool[EngineHandle],
) -> None:
    """Four parallel slots of 2048 tokens each (n_ctx 8192 in all); a repeated prompt is
    served from the prompt cache, and ``/metrics`` says so in ``llamacpp:*`` terms."""
    engine = _only_engine(pool)
    with httpx.Client(base_url=engine.url, timeout=30.0) as client:
        slots = client.get("/slots").json()
        assert [slot["n_ctx"] for slot in slots] == [2048] * 4
        before = parse_engine_metrics(client.get("/metrics").text, "llamacpp")
        prompt = {**CHAT, "messages": [{"role": "user", "content": "Spell 'cache' twice."}]}
        client.post("/v1/chat/completions", json=prompt).raise_for_status()
        again = client.post("/v1/chat/completions", json=prompt).json()
        after = parse_engine_metrics(client.get("/metrics").text, "llamacpp")
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert (after.cached_prompt_tokens_total or 0) > (before.cached_prompt_tokens_total or 0)
    assert after.prompt_tokens_total > before.prompt_tokens_total
    assert after.generation_tokens_total > before.generation_tokens_total
    assert after.num_running == 0 and after.num_waiting == 0


def test_the_engines_threads_yield_the_cpu_to_the_gateway(
    pool: ReplicaPool[EngineHandle],
) -> None:
    """Every thread of the engine runs as batch work (``SCHED_BATCH``, the default
    ``batch_scheduling``), so the gateway's wake-ups preempt its decode threads."""
    engine = _only_engine(pool)
    threads = [int(t) for t in os.listdir(f"/proc/{engine.pid}/task")]
    assert len(threads) > 2  # the engine's compute and HTTP threads, not only the main one
    assert {os.sched_getscheduler(t) for t in threads} == {os.SCHED_BATCH}


def test_batch_scheduling_can_be_turned_off() -> None:
    """``batch_scheduling: false`` leaves the engine process under the default policy
    (the setting reaches the process; the pure call is tested in its own process)."""
    spec = smollm2_spec(batch_scheduling=False)
    assert LlamaCppBackend(spec).settings(1)["batch_scheduling"] is False
    assert LlamaCppBackend(smollm2_spec()).settings(1)["batch_scheduling"] is True
    script = (
        "import os; from aiscale.engines.llamacpp_process import "
        "yield_cpu_to_latency_bound_work as y; "
        "before = os.sched_getscheduler(0); ok = y(); "
        "print(before == os.SCHED_OTHER, ok, os.sched_getscheduler(0) == os.SCHED_BATCH)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    assert out == ["True", "True", "True"]


def test_a_slot_kv_cache_is_saved_to_the_slot_folder_and_restored(
    pool: ReplicaPool[EngineHandle], slot_dir: Path
) -> None:
    """``/slots/{id}?action=save`` writes the slot's KV cache into the spec's slot folder
    (where another replica can restore it from); ``restore`` reads it into another slot."""
    engine = _only_engine(pool)
    with httpx.Client(base_url=engine.url, timeout=30.0) as client:
        client.post("/v1/chat/completions", json=CHAT).raise_for_status()
        busy = next(slot for slot in client.get("/slots").json() if slot.get("n_prompt_tokens"))
        saved = client.post(f"/slots/{busy['id']}?action=save", json={"filename": "conv-1.bin"})
        assert saved.status_code == 200 and saved.json()["n_saved"] > 0
        assert (slot_dir / "conv-1.bin").stat().st_size > 0
        other = (busy["id"] + 1) % 4
        restored = client.post(f"/slots/{other}?action=restore", json={"filename": "conv-1.bin"})
    assert restored.status_code == 200
    assert restored.json()["n_restored"] == saved.json()["n_saved"]


def test_send_is_refused_with_a_clear_error(pool: ReplicaPool[EngineHandle]) -> None:
    """Engines take HTTP requests, not batches: ``send`` names where requests go instead."""
    engine = _only_engine(pool)
    with pytest.raises(AiscaleError, match=f"takes HTTP requests at {engine.url}, not batches"):
        LlamaCppBackend(smollm2_spec()).send(engine, ["x"])


def test_an_engine_killed_with_minus_9_is_replaced(
    pool: ReplicaPool[EngineHandle], loop_thread: LoopThread
) -> None:
    """``kill -9`` of the engine: the pool learns it from ``wait_dead`` and starts a new
    engine on a new port, which answers; the old one's port is gone."""
    old = _only_engine(pool)
    os.kill(old.pid, signal.SIGKILL)
    wait_for(
        lambda: pool.num_replaced == 1 and pool.num_ready == 1, 60.0, "a replacement engine"
    )
    new = _only_engine(pool)
    assert new.pid != old.pid and new.url != old.url and _is_gone(old.pid)
    with httpx.Client(timeout=30.0) as client:
        assert client.post(f"{new.url}/v1/chat/completions", json=CHAT).status_code == 200
        with pytest.raises(httpx.ConnectError):
            client.get(f"{old.url}/health")


class _Lease:
    """A GPU lease as the GPU pool gives one: variables for the replica, released once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self.num_released = 0
        self.is_serving = False

    @property
    def env(self) -> Mapping[str, str]:
        return self._env

    def serving(self) -> None:
        self.is_serving = True

    def release(self) -> None:
        self.num_released += 1


def test_stop_drains_a_running_request_then_leaves_no_process(
    loop_thread: LoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine gets the replica allow-list environment plus its lease's devices (never
    the gateway's secrets); ``stop`` lets a generation in progress finish, then the engine
    exits by itself (code 0) and its pid is gone."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-engines")
    spec = smollm2_spec()
    lease = _Lease({"CUDA_VISIBLE_DEVICES": "3"})
    engines: ReplicaPool[EngineHandle] = ReplicaPool(
        spec.replica_spec(), LlamaCppBackend(spec), resources=_LeaseGiver(lease)
    )
    loop_thread.run(engines.start(1))
    replica = engines.replicas()[0]
    engine = replica.handle
    environ = Path(f"/proc/{engine.pid}/environ").read_bytes().split(b"\0")
    assert b"CUDA_VISIBLE_DEVICES=3" in environ
    assert not any(item.startswith(b"AWS_SECRET_ACCESS_KEY=") for item in environ)

    answers: list[dict[str, Any]] = []
    long_generation = {**CHAT, "max_tokens": 32, "ignore_eos": True}

    def generate() -> None:
        with httpx.Client(timeout=60.0) as client:
            answer = client.post(f"{engine.url}/v1/chat/completions", json=long_generation)
            answers.append(answer.json())

    caller = threading.Thread(target=generate)
    caller.start()
    with httpx.Client(timeout=10.0) as client:
        wait_for(
            lambda: parse_engine_metrics(client.get(f"{engine.url}/metrics").text, "llamacpp")
            .num_running,
            20.0,
            "the generation to start",
        )
    started = time.monotonic()
    loop_thread.run(engines.stop(drain_timeout_s=30.0))
    caller.join(30.0)
    assert answers and answers[0]["usage"]["completion_tokens"] == 32
    assert time.monotonic() - started < 25.0
    assert _is_gone(engine.pid) and engine.process is not None
    assert engine.process.returncode == 0
    assert engines.replicas() == []
    assert lease.is_serving and lease.num_released >= 1


class _LeaseGiver:
    def __init__(self, lease: _Lease) -> None:
        self.lease = lease

    async def acquire(self) -> _Lease:
        return self.lease


def test_a_bad_model_fails_the_start_with_its_cause_and_leaves_nothing(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    """A file that is not GGUF: ``ModelLoadError`` carrying llama.cpp's own error line; a
    missing file: ``ModelLoadError`` before any process starts. The pool has no replica."""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model at all")
    missing = tmp_path / "none.gguf"
    for model, cause in ((bad, "invalid magic characters"), (missing, "does not exist")):
        spec = smollm2_spec(model=str(model))
        engines: ReplicaPool[EngineHandle] = ReplicaPool(spec.replica_spec(), LlamaCppBackend(spec))
        with pytest.raises(ModelLoadError, match=cause):
            loop_thread.run(engines.start(1))
        assert engines.replicas() == [] and engines.num_starting == 0
        loop_thread.run(engines.stop(drain_timeout_s=1.0))


def test_an_engine_ends_when_its_gateway_is_killed(tmp_path: Path) -> None:
    """No engine outlives the process that started it: ``kill -9`` of a gateway closes the
    engine's lifeline, and the engine exits by itself."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from aiscale.engines.llamacpp import LlamaCppBackend
        from tests.engines.conftest import smollm2_spec

        async def main():
            handle, _ = await LlamaCppBackend(smollm2_spec()).spawn(0, num_replicas=1, lease=None)
            print(handle.pid, flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    gateway = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert gateway.stdout is not None
        engine_pid = int(gateway.stdout.readline())
        assert not _is_gone(engine_pid)
    finally:
        gateway.kill()
        gateway.wait(10)
        gateway.stdout.close() if gateway.stdout else None
    wait_for(lambda: _is_gone(engine_pid), 15.0, "the orphaned engine to exit")
