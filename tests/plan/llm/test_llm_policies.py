"""The token-aware policies, pure and in the simulator: a step in load adds replicas, a drop
removes them only after the stabilisation window, a deployment at zero is activated by one
held request, and bad names or knobs are one clear error."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from aiscale.errors import ConfigError
from aiscale.plan.llm.exact import run_exact
from aiscale.plan.llm.simconfig import LlmSimConfig
from aiscale.plan.llm.sizing import build_llm_policy, capacity_at_slo
from aiscale.plan.llm.workload import TokenRequests
from aiscale.scaling.policies.llm_capacity import LlmCapacity
from aiscale.scaling.policies.llm_factory import LLM_POLICY_NAMES, make_llm_policy
from aiscale.scaling.policies.llm_observation import LlmScalingObservation
from tests.plan.llm.toys import toy_profile

CAPACITY = LlmCapacity(
    prompt_tokens_per_s=10_000.0, output_tokens_per_s=1_000.0, kv_capacity_tokens=100_000,
    max_num_seqs=64,
)  # fmt: skip


def _obs(now: float, replicas: int, **changes: object) -> LlmScalingObservation:
    values: dict[str, object] = {
        "now_s": now,
        "num_replicas": replicas,
        "num_ready": replicas,
        "num_starting": 0,
        "num_waiting": 0,
        "num_running": 10,
        "kv_cache_usage": 0.3,
        "ttft_p99_s": 0.2,
        "itl_p99_s": 0.03,
        "prompt_tokens_per_s": 10_000.0,
        "output_tokens_per_s": 1_000.0,
        "arrival_rate_per_s": 10.0,
    }
    values.update(changes)
    return LlmScalingObservation(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["llm-target", "llm-slo", "llm-predictive"])
def test_a_step_up_acts_at_once_and_a_drop_waits_for_the_window(name: str) -> None:
    """Load x4 raises the target in the same decision; load back down lowers it only once the
    scale-down window (300 s target, 120 s SLO/predictive) has passed, and never below min."""
    knobs = {} if name == "llm-target" else {"capacity": CAPACITY}
    policy = make_llm_policy(name, min_replicas=1, max_replicas=50, **knobs)
    state = policy.initial_state()
    calm = {"num_running": 20, "kv_cache_usage": 0.3}
    busy = {
        "num_running": 200, "num_waiting": 40, "kv_cache_usage": 0.95,
        "prompt_tokens_per_s": 40_000.0, "output_tokens_per_s": 4_000.0, "arrival_rate_per_s": 40.0,
    }  # fmt: skip
    decision, state = policy.decide(_obs(10.0, 3, **calm), state)
    calm_target = decision.target_replicas
    decision, state = policy.decide(_obs(20.0, calm_target, **busy), state)
    high = decision.target_replicas
    assert high > calm_target
    window = 300.0 if name == "llm-target" else 120.0
    t, current = 30.0, high
    while t < 20.0 + window - 10:
        decision, state = policy.decide(_obs(t, current, **calm), state)
        assert decision.target_replicas == current, (t, decision)
        t += 10.0
    for _ in range(40):
        decision, state = policy.decide(_obs(t, current, **calm), state)
        current = decision.target_replicas
        t += 10.0
    assert 1 <= current < high


def test_slo_policy_raises_its_correction_when_p99_misses() -> None:
    """The same token load with TTFT p99 over target asks for more replicas than on target."""
    policy = make_llm_policy("llm-slo", capacity=CAPACITY, ttft_target_s=1.0)
    load = {"prompt_tokens_per_s": 40_000.0, "arrival_rate_per_s": 40.0}
    on_target, _ = policy.decide(_obs(10.0, 4, ttft_p99_s=0.8, **load), policy.initial_state())
    missing, _ = policy.decide(_obs(10.0, 4, ttft_p99_s=3.0, **load), policy.initial_state())
    assert missing.target_replicas > on_target.target_replicas


def test_predictive_starts_replicas_ahead_of_a_ramp() -> None:
    """A token history rising for 15 minutes: the forecast asks for more than the SLO policy's
    floor at the current rate, and never for fewer."""
    history_p = [(60.0 * i, 60.0 * (5_000 + 1_000 * i)) for i in range(15)]
    history_o = [(60.0 * i, 60.0 * (500 + 100 * i)) for i in range(15)]
    obs = _obs(
        900.0, 5, prompt_tokens_per_s=19_000.0, output_tokens_per_s=1_900.0,
        prompt_token_history=history_p, output_token_history=history_o,
    )  # fmt: skip
    slo = make_llm_policy("llm-slo", capacity=CAPACITY)
    predictive = make_llm_policy("llm-predictive", capacity=CAPACITY, startup_s=120.0)
    floor, _ = slo.decide(obs, slo.initial_state())
    ahead, _ = predictive.decide(obs, predictive.initial_state())
    assert ahead.target_replicas > floor.target_replicas
    flat, _ = predictive.decide(replace(obs, prompt_token_history=(), output_token_history=()),
                                predictive.initial_state())  # fmt: skip
    assert flat.target_replicas == floor.target_replicas


def _headroom(prompt_per_min: list[float], **knobs: object) -> float:
    from aiscale.scaling.policies.llm_predictive import LlmPredictivePolicy, measured_headroom

    policy = make_llm_policy("llm-predictive", capacity=CAPACITY, **knobs)
    assert isinstance(policy, LlmPredictivePolicy)
    history_p = [(60.0 * i, tokens) for i, tokens in enumerate(prompt_per_min)]
    history_o = [(60.0 * i, tokens / 10) for i, tokens in enumerate(prompt_per_min)]
    obs = _obs(60.0 * len(prompt_per_min), 5, prompt_token_history=history_p,
               output_token_history=history_o)  # fmt: skip
    return measured_headroom(policy.config, obs)


def test_predictive_headroom_is_measured_from_how_much_the_load_moves() -> None:
    """Steady load gets no headroom, a load that moves gets twice its RMS bin-to-bin change
    relative to the mean, bounded; a fixed ``headroom`` knob is used as given."""
    steady = [600_000.0] * 20
    wobbly = [600_000.0 * (1.05 if i % 2 else 0.95) for i in range(20)]
    wild = [600_000.0 * (3.0 if i % 2 else 0.2) for i in range(20)]
    assert _headroom(steady) == 0.0
    assert _headroom(wobbly) == pytest.approx(2 * 0.1, rel=1e-6)
    assert _headroom(wild) == 0.5
    assert _headroom(wobbly, headroom=0.1) == 0.1
    assert _headroom(steady[:2]) == 0.0  # too little history to measure


def test_activation_from_zero_and_back_to_zero() -> None:
    """At zero, one held request asks for a replica at once; an idle replica goes to zero only
    after the cooldown."""
    policy = make_llm_policy("llm-target", min_replicas=0, scale_to_zero_delay_s=60.0)
    state = policy.initial_state()
    idle = {"num_running": 0, "num_waiting": 0, "kv_cache_usage": None, "arrival_rate_per_s": 0.0}
    decision, state = policy.decide(_obs(0.0, 0, **idle), state)
    assert decision.target_replicas == 0
    decision, state = policy.decide(
        _obs(1.0, 0, **{**idle, "num_waiting": 1, "num_held": 1}), state
    )
    assert decision.target_replicas == 1
    targets = []
    for t in range(10, 200, 10):
        decision, state = policy.decide(_obs(float(t), 1, **idle), state)
        targets.append((t, decision.target_replicas))
    assert all(target == 1 for t, target in targets if t < 70)
    assert targets[-1][1] == 0


def test_in_the_simulator_a_step_adds_replicas_and_the_drop_removes_them() -> None:
    """Exact mode, SLO policy: 5/s, then 60/s for 5 minutes, then 5/s again."""
    profile = toy_profile(max_context_tokens=4096, kv_capacity_tokens=40_000, max_num_seqs=16)
    rng = np.random.default_rng(0)
    times = np.concatenate([
        np.sort(rng.uniform(0, 120, 600)), np.sort(rng.uniform(120, 420, 18_000)),
        np.sort(rng.uniform(420, 900, 2400)),
    ])  # fmt: skip
    n = times.size
    requests = TokenRequests(times, rng.integers(50, 300, n), rng.integers(10, 60, n), 900.0)
    policy = build_llm_policy(
        "llm-slo", profile, ttft_slo_s=1.0, itl_slo_s=0.1, mean_prompt=175.0, mean_output=35.0
    )
    config = LlmSimConfig(profile=profile, initial_replicas=1)
    result = run_exact(requests, policy, config)
    paid = {t: p for t, p, _ in result.timeline}
    before = paid[110.0]
    during = max(p for t, p in paid.items() if 150 <= t <= 420)
    after = paid[max(paid)]
    assert during > before
    assert after < during
    assert result.completed + result.dropped == result.requests


def test_capacity_at_slo_keeps_the_step_within_the_itl_budget() -> None:
    """The sizing batch's decode step fits 70% of the ITL target; a tighter target gives a
    smaller batch and less decode throughput."""
    profile = toy_profile()
    loose = capacity_at_slo(profile, itl_slo_s=0.1, mean_prompt=200, mean_output=50)
    tight = capacity_at_slo(profile, itl_slo_s=0.015, mean_prompt=200, mean_output=50)
    assert tight.output_tokens_per_s < loose.output_tokens_per_s
    assert loose.prompt_tokens_per_s == pytest.approx(1 / profile.prefill_per_token_s)


@pytest.mark.parametrize(
    ("name", "knobs", "field"),
    [
        ("llm-nope", {}, "policy"),
        ("llm-slo", {}, "capacity"),
        ("llm-target", {"target_kv_cache_usage": 1.5}, "target_kv_cache_usage"),
        ("llm-target", {"bogus": 1}, "llm-target"),
        ("llm-target", {"min_replicas": 5, "max_replicas": 2}, "max_replicas"),
    ],
)
def test_bad_names_and_knobs_are_config_errors(name: str, knobs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_llm_policy(name, **knobs)
    assert caught.value.field == field


def test_policy_modules_stay_pure() -> None:
    """Importing every LLM policy loads no web framework, database, numpy or engine code."""
    code = (
        "import sys; import aiscale.scaling.policies.llm_factory as f; "
        f"assert f.LLM_POLICY_NAMES == {LLM_POLICY_NAMES!r}; "
        "bad = [m for m in ('numpy', 'starlette', 'sqlalchemy', 'redis', 'ray', 'httpx') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_long_prompts_leave_less_room_for_prefill() -> None:
    """The TTFT bound on the prefill share: long, varied prompts queue longer, so a replica
    may spend less of its time prefilling them; short ones barely constrain it."""
    profile = toy_profile(max_batched_tokens=2048)
    short = capacity_at_slo(
        profile, itl_slo_s=0.1, mean_prompt=100, mean_output=50, ttft_slo_s=1.0,
        prompt_tokens=[80, 100, 120] * 10,
    )  # fmt: skip
    long = capacity_at_slo(
        profile, itl_slo_s=0.1, mean_prompt=3000, mean_output=50, ttft_slo_s=1.0,
        prompt_tokens=[500, 2000, 6000] * 10,
    )  # fmt: skip
    assert long.max_prefill_share < short.max_prefill_share <= 1.0
    assert long.max_prefill_share >= 0.2  # below that the bound is dropped (out of reach)
