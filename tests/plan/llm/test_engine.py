"""The exact mode's engine and fleet: every request finishes or is counted as dropped, the KV
cache never holds more than it can, preemption frees room and loses no work, and prefix reuse
skips prefill."""

from __future__ import annotations

import numpy as np

from aiscale.plan.llm.engine import Engine, Sequence
from aiscale.plan.llm.exact import run_exact
from aiscale.plan.llm.simconfig import LlmSimConfig
from aiscale.plan.llm.workload import TokenRequests, multi_turn_chat
from aiscale.scaling.policies.llm_factory import make_llm_policy
from tests.plan.llm.toys import poisson_requests, toy_profile


def _drive(engine: Engine, seqs: list[Sequence], check: list[int]) -> tuple[list[Sequence], int]:
    """Run one engine until idle, recording ``kv_used + cached`` after every step."""
    for seq in seqs:
        engine.enqueue(seq)
    now, finished, dropped = 0.0, [], []  # type: ignore[var-annotated]
    steps = 0
    while True:
        duration = engine.begin(now, 1e9, dropped)
        check.append(engine.kv_used + engine.cached_tokens)
        if duration is None:
            break
        now += duration
        events = engine.end(now)
        finished.extend(events.finished)
        check.append(engine.kv_used + engine.cached_tokens)
        steps += 1
    return finished, steps


def test_every_request_finishes_or_is_counted_dropped() -> None:
    """Conservation: completed + dropped = requests, with overload (timeouts) and prompts over
    the context (rejected) in the mix."""
    requests = poisson_requests(40.0, 60.0, seed=1, prompt=(100, 2500), output=(10, 200))
    config = LlmSimConfig(profile=toy_profile(), initial_replicas=1, max_wait_s=5.0)
    result = run_exact(requests, make_llm_policy("llm-static", num_replicas=1), config)
    assert result.requests == requests.num_requests
    assert result.completed + result.dropped == result.requests
    assert result.dropped_by_reason.get("context", 0) > 0
    assert result.dropped_by_reason.get("timeout", 0) > 0
    assert sum(result.dropped_by_reason.values()) == result.dropped


def test_kv_admission_never_exceeds_capacity() -> None:
    """At every step the tokens held (running plus cached prefixes) fit the cache."""
    profile = toy_profile(kv_capacity_tokens=3000, max_num_seqs=16)
    engine = Engine(profile, watermark=0.01, is_prefix_caching=True)
    rng = np.random.default_rng(3)
    seqs = [
        Sequence(i, 0.0, int(rng.integers(100, 900)), int(rng.integers(50, 400)), i % 5, 0)
        for i in range(60)
    ]
    held: list[int] = []
    finished, _ = _drive(engine, seqs, held)
    assert max(held) <= profile.kv_capacity_tokens
    assert len(finished) == len(seqs)
    assert engine.kv_used == 0


def test_preemption_frees_room_and_loses_no_tokens() -> None:
    """Long answers outgrow a small cache: sequences are preempted, recomputed, and every one
    still ends with exactly its output tokens."""
    profile = toy_profile(kv_capacity_tokens=2000, max_num_seqs=8)
    engine = Engine(profile, watermark=0.0, is_prefix_caching=False)
    seqs = [Sequence(i, 0.0, 200, 600, -1, 0) for i in range(8)]
    held: list[int] = []
    finished, _ = _drive(engine, seqs, held)
    assert engine.num_preemptions > 0
    assert len(finished) == 8
    assert all(seq.generated == seq.output for seq in finished)
    assert max(held) <= profile.kv_capacity_tokens


def test_prefix_reuse_reduces_prefill() -> None:
    """Multi-turn conversations routed by session hit the cache; without caching they do not,
    and prefill more tokens (so first tokens come later)."""
    requests = multi_turn_chat(num_conversations=30, turns=4, duration_s=300.0, think_s=10.0)
    profile = toy_profile(kv_capacity_tokens=60_000, max_context_tokens=8192)
    results = {}
    for caching in (True, False):
        config = LlmSimConfig(
            profile=profile, routing="session", initial_replicas=2, is_prefix_caching=caching
        )
        results[caching] = run_exact(
            requests, make_llm_policy("llm-static", num_replicas=2), config
        )
    assert results[True].cached_prompt_tokens > 0.3 * results[True].prompt_tokens
    assert results[False].cached_prompt_tokens == 0
    assert results[True].ttft_p50_s < results[False].ttft_p50_s


def test_prefix_aware_routing_hits_more_than_round_robin() -> None:
    """The router's prefix choice (routing_choice.pick_by_prefix) finds the engine holding a
    conversation; round robin finds it one time in N."""
    requests = multi_turn_chat(num_conversations=40, turns=4, duration_s=300.0, think_s=10.0)
    profile = toy_profile(kv_capacity_tokens=60_000, max_context_tokens=8192)
    rates = {}
    for routing in ("prefix_aware", "round_robin"):
        config = LlmSimConfig(profile=profile, routing=routing, initial_replicas=3)
        result = run_exact(requests, make_llm_policy("llm-static", num_replicas=3), config)
        rates[routing] = result.prefix_hit_rate
    assert rates["prefix_aware"] > 1.5 * rates["round_robin"]


def test_same_input_gives_the_same_run() -> None:
    """Deterministic: the same requests and policy give the same events and latencies."""
    requests = poisson_requests(10.0, 60.0, seed=2)
    config = LlmSimConfig(profile=toy_profile(), initial_replicas=1)
    runs = [
        run_exact(requests, make_llm_policy("llm-static", num_replicas=1), config) for _ in range(2)
    ]
    assert runs[0].num_events == runs[1].num_events
    assert runs[0].ttft_p99_s == runs[1].ttft_p99_s


def test_a_deployment_at_zero_holds_the_first_request_and_reports_the_cold_start() -> None:
    """Scale to zero: nothing is failed while the engine loads; the wait is the cold start."""
    requests = TokenRequests(
        np.array([1.0, 1.5, 100.0]), np.array([100, 100, 100]), np.array([10, 10, 10]), 400.0
    )
    profile = toy_profile()
    policy = make_llm_policy("llm-target", min_replicas=0, scale_to_zero_delay_s=30.0)
    config = LlmSimConfig(profile=profile, initial_replicas=0)
    result = run_exact(requests, policy, config)
    assert result.completed == 3 and result.dropped == 0
    assert result.cold_starts >= 1
    assert result.max_cold_start_wait_s >= profile.startup_s - 1e-9
    assert result.ttft_p99_s >= profile.startup_s
    assert result.timeline[-1][1] == 0  # back to zero after the idle cooldown
