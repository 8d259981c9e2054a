"""The token-aware observation, made one way live and simulated (``scaling/llm_observe.py``),
and the live autoscaler running a token-aware policy on a ``ManualClock``."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from aiscale.contracts.clock import ManualClock
from aiscale.contracts.fleet import FleetSnapshot, LlmSignals
from aiscale.contracts.histogram import latency_histogram
from aiscale.scaling.controller import VersionAutoscaler, hold_s_of, make_scaling_policy
from aiscale.scaling.llm_observe import (
    LlmLoadSample,
    kv_cache_signal,
    llm_observation,
    observe_llm,
)
from tests.fleets import MemoryFleet


@pytest.mark.parametrize(
    ("kv", "running", "slots", "expected"),
    [
        (0.4, 8, 8, 0.4),  # the engine's own figure wins
        (None, 3, 4, 0.75),  # else the share of busy slots
        (None, 9, 4, 1.0),  # never above full
        (None, 0, 0, None),  # nothing known (no engine ready)
    ],
)
def test_kv_cache_signal_falls_back_to_slot_occupancy(
    kv: float | None, running: int, slots: int, expected: float | None
) -> None:
    """A llama.cpp build without a KV gauge is read by its slots: a slot holds a window."""
    assert kv_cache_signal(kv, running, slots) == expected


def sample(at_s: float, *, lane_id: int = 1, ttfts: tuple[float, ...] = (), **counts: float
           ) -> LlmLoadSample:
    base = {"num_arrived": 0.0, "prompt_tokens": 0.0, "output_tokens": 0.0}
    base.update(counts)
    return LlmLoadSample(
        at_s=at_s,
        lane_id=lane_id,
        num_ready=2,
        num_starting=1,
        num_waiting=3,
        num_held=1,
        num_running=4,
        kv_cache_usage=None,
        num_slots=8,
        ttft_s=latency_histogram().with_samples(list(ttfts)),
        itl_s=latency_histogram(),
        **base,
    )


def test_observe_llm_diffs_two_readings_into_the_interval() -> None:
    """Rates and p99s cover only what happened between the two readings; held requests
    count as waiting; KV use stands in from the slots."""
    before = sample(10.0, ttfts=(0.1,) * 50, num_arrived=5, prompt_tokens=100, output_tokens=40)
    after = sample(
        12.0, ttfts=(0.1,) * 50 + (2.0,) * 10, num_arrived=25, prompt_tokens=900,
        output_tokens=440,
    )
    seen = observe_llm(after, before)
    assert seen.now_s == 12.0 and seen.num_replicas == 3 and seen.num_starting == 1
    assert seen.num_waiting == 4 and seen.num_held == 1 and seen.num_running == 4
    assert seen.kv_cache_usage == 0.5
    assert seen.arrival_rate_per_s == pytest.approx(10.0)
    assert seen.prompt_tokens_per_s == pytest.approx(400.0)
    assert seen.output_tokens_per_s == pytest.approx(200.0)
    # Only the ten slow first tokens are in the interval: its p99 is theirs, not 0.1 s.
    assert seen.ttft_p99_s == pytest.approx(2.0, rel=0.06)
    assert seen.itl_p99_s is None


def test_a_new_lane_or_no_previous_reading_is_an_empty_interval() -> None:
    """Counts of two lanes are never diffed (a replaced lane restarts them from zero)."""
    later = sample(12.0, lane_id=2, num_arrived=3, prompt_tokens=50)
    for previous in (None, sample(10.0, lane_id=1, num_arrived=900)):
        seen = observe_llm(later, previous)
        assert seen.arrival_rate_per_s == 0.0 and seen.prompt_tokens_per_s == 0.0
        assert seen.ttft_p99_s is None and seen.num_waiting == 4


def test_the_simulator_observes_through_the_same_function() -> None:
    """What the LLM simulator's interval statistics show a policy equals what the shared
    function makes of the same interval (one definition of rates, waiting and p99s)."""
    observing = pytest.importorskip("aiscale.plan.llm.observing")
    stats = observing.IntervalStats()
    stats.reset(100.0)
    for prompt, output in ((120, 30), (80, 10), (200, 50)):
        stats.add_arrival(prompt, output)
    for ttft in (0.2, 0.3, 0.9):
        stats.add_ttft(ttft)
    stats.add_itl(0.05, 40.0)
    simulated = stats.observation(
        104.0, num_replicas=3, num_ready=2, num_waiting=5, num_running=6,
        kv_cache_usage=0.7, num_held=1, prompt_history=(), output_history=(),
    )
    shared = llm_observation(
        104.0, 4.0, num_replicas=3, num_ready=2, num_waiting=5, num_running=6,
        kv_cache_usage=0.7, num_held=1, num_arrived=3, prompt_tokens=400, output_tokens=90,
        ttft_p99_s=simulated.ttft_p99_s, itl_p99_s=simulated.itl_p99_s,
    )
    assert shared == simulated


def test_live_and_simulated_paths_make_the_same_observation_of_the_same_requests() -> None:
    """The same interval (arrivals, tokens, first-token times, gauges) seen live, as two
    cumulative readings diffed by ``observe_llm``, and in the simulator, as ``IntervalStats``,
    gives the same observation; the p99 differs only by the live histogram's bin width."""
    observing = pytest.importorskip("aiscale.plan.llm.observing")
    ttfts = tuple(0.05 * (1 + i % 20) for i in range(200))
    before = sample(30.0, ttfts=(0.1,) * 40, num_arrived=40, prompt_tokens=4000,
                    output_tokens=800)
    after = sample(40.0, ttfts=(0.1,) * 40 + ttfts, num_arrived=240, prompt_tokens=64000,
                   output_tokens=12800)
    live = observe_llm(after, before)
    stats = observing.IntervalStats()
    stats.reset(30.0)
    for _ in range(200):
        stats.add_arrival(300.0, 60.0)
    for ttft in ttfts:
        stats.add_ttft(ttft)
    simulated = stats.observation(
        40.0, num_replicas=3, num_ready=2, num_waiting=4, num_running=4, kv_cache_usage=None,
        num_held=1, prompt_history=(), output_history=(),
    )
    # The simulator passes no slot count: its engines report KV use (here none known).
    assert simulated.kv_cache_usage is None and live.kv_cache_usage == 0.5
    assert live.ttft_p99_s == pytest.approx(1.0, rel=0.06)
    assert simulated.ttft_p99_s == pytest.approx(1.0)
    assert dataclasses.replace(
        simulated, kv_cache_usage=live.kv_cache_usage, ttft_p99_s=live.ttft_p99_s
    ) == live


def llm_signals(*, waiting: int = 0, running: int = 0, held: int = 0) -> LlmSignals:
    return LlmSignals(
        num_waiting=waiting, num_running=running, num_held=held, kv_cache_usage=None,
        num_slots=2, prompt_tokens=0.0, output_tokens=0.0, ttft_s=latency_histogram(),
        itl_s=latency_histogram(),
    )


class LlmFleet(MemoryFleet):
    """``MemoryFleet`` whose versions carry the LLM signals a test sets."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.signals = llm_signals()

    def snapshot(self, deployment: str | None = None) -> tuple[FleetSnapshot, ...]:
        return tuple(
            dataclasses.replace(s, llm=dataclasses.replace(self.signals, num_slots=2 * s.num_ready))
            for s in super().snapshot(deployment)
        )


def test_a_token_aware_policy_runs_the_live_loop_on_engine_signals() -> None:
    """``llm-target`` in the live autoscaler: requests waiting in the engines add replicas
    at once; once idle the fleet shrinks only after the scale-down window."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet = LlmFleet(clock)
        fleet.deploy("chat", "1", num_replicas=1)
        loop = VersionAutoscaler(
            fleet, clock, "chat", "1", policy="llm-target", interval_s=1.0,
            knobs={"target_waiting_per_replica": 2.0, "downscale_stabilization_s": 10.0,
                   "max_replicas": 4},
        )
        assert loop.is_llm and loop.hold_s == 10.0
        loop.start()
        fleet.signals = llm_signals(waiting=6, running=2)
        await clock.advance(1.0)
        assert fleet.snapshot("chat")[0].num_wanted == 3
        assert fleet.scales[-1].cause.startswith("autoscaler: up: waiting 3.00")
        fleet.signals = llm_signals()
        await clock.advance(9.0)
        assert fleet.snapshot("chat")[0].num_wanted == 3  # inside the window
        await clock.advance(2.0)
        assert fleet.snapshot("chat")[0].num_wanted == 1
        assert len(loop.prompt_token_history) >= 10  # token bins kept for the forecasts
        await loop.stop()

    asyncio.run(scenario())


def test_a_token_aware_policy_needs_llm_signals_and_valid_knobs() -> None:
    """A version without LLM signals is left as it is (logged); bad knobs fail at once."""

    async def scenario() -> None:
        clock = ManualClock()
        fleet = MemoryFleet(clock)
        fleet.deploy("m", "1", num_replicas=2)
        loop = VersionAutoscaler(
            fleet, clock, "m", "1", policy="llm-target", knobs={}, interval_s=1.0
        )
        loop.start()
        await clock.advance(3.0)
        assert fleet.snapshot("m")[0].num_wanted == 2 and loop.last_decision is None
        await loop.stop()

    asyncio.run(scenario())
    from aiscale.errors import ConfigError

    with pytest.raises(ConfigError):
        make_scaling_policy("llm-target", {"target_kv_cache_usage": 2.0})
    assert hold_s_of(make_scaling_policy("llm-static", {})) > 0
    assert math.isfinite(hold_s_of(make_scaling_policy("reactive", {})))


def test_llm_signals_are_optional_in_a_snapshot() -> None:
    """A model version's snapshot has no LLM signals; ``LlmLoadSample.of`` refuses it."""
    clock = ManualClock()
    fleet = MemoryFleet(clock)
    fleet.deploy("m", "1")
    [snapshot] = fleet.snapshot("m")
    assert snapshot.llm is None
    with pytest.raises(ValueError, match="not an LLM version"):
        LlmLoadSample.of(snapshot, 0.0)
