"""The one way a token-aware scaling observation is made, live and simulated.

``llm_observation`` turns what a scaler counted over its last decision interval (requests,
prompt and output tokens, the p99s of time to first token and of inter-token latency) and
what it sees now (replicas, requests waiting, held and running, KV-cache use) into the
``LlmScalingObservation`` a token-aware policy decides on. Both the simulator
(``aiscale.plan.llm``, whose ``IntervalStats`` keeps its interval's samples) and the live
autoscaler call it, so rates, the KV-cache stand-in and the meaning of "waiting" are the
same in both.

The live side reads cumulative values from the Fleet (``FleetSnapshot.llm``):
``LlmLoadSample.of`` takes one reading, ``observe_llm`` diffs two of them (the last
decision's and this one) into the interval's counts and p99s and calls ``llm_observation``.

Pure: no clock (times travel in the samples), no I/O. Imports only contracts and policies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from aiscale.contracts.fleet import FleetSnapshot
from aiscale.contracts.histogram import Histogram
from aiscale.scaling.policies.llm_observation import LlmScalingObservation

__all__ = ["LlmLoadSample", "kv_cache_signal", "llm_observation", "observe_llm"]

#: The quantile the policies read of TTFT and ITL over one interval.
LATENCY_QUANTILE = 0.99


def kv_cache_signal(
    kv_cache_usage: float | None, num_running: int, num_slots: int
) -> float | None:
    """KV-cache use as the policies read it: the engines' own figure, else (an engine that
    does not export it, such as llama.cpp builds without ``kv_cache_usage_ratio``) the share
    of decoding slots in use, ``running / slots``: a llama.cpp slot holds a whole context
    window of KV cache, so full slots are a full cache. ``None`` when neither is known."""
    if kv_cache_usage is not None:
        return kv_cache_usage
    if num_slots > 0:
        return min(1.0, num_running / num_slots)
    return None


def llm_observation(
    now_s: float,
    span_s: float,
    *,
    num_replicas: int,
    num_ready: int,
    num_waiting: int,
    num_running: int,
    kv_cache_usage: float | None,
    num_held: int,
    num_arrived: float,
    prompt_tokens: float,
    output_tokens: float,
    ttft_p99_s: float | None,
    itl_p99_s: float | None,
    num_slots: int = 0,
    prompt_token_history: Sequence[tuple[float, float]] = (),
    output_token_history: Sequence[tuple[float, float]] = (),
) -> LlmScalingObservation:
    """The observation at ``now_s`` of an interval of ``span_s`` seconds.

    ``num_waiting`` counts every request waiting for a slot, ``num_held`` (held at the
    gateway while no engine is ready) included. ``num_arrived``, ``prompt_tokens`` and
    ``output_tokens`` are the interval's counts (rates are these over ``span_s``; zero for
    an empty span). ``kv_cache_usage`` ``None`` falls back to slot occupancy when
    ``num_slots`` is known (``kv_cache_signal``). A p99 that is NaN counts as no sample."""
    span = max(span_s, 1e-9)
    return LlmScalingObservation(
        now_s=now_s,
        num_replicas=num_replicas,
        num_ready=num_ready,
        num_starting=num_replicas - num_ready,
        num_waiting=num_waiting,
        num_running=num_running,
        kv_cache_usage=kv_cache_signal(kv_cache_usage, num_running, num_slots),
        ttft_p99_s=_known(ttft_p99_s),
        itl_p99_s=_known(itl_p99_s),
        prompt_tokens_per_s=max(0.0, prompt_tokens) / span,
        output_tokens_per_s=max(0.0, output_tokens) / span,
        arrival_rate_per_s=max(0.0, num_arrived) / span,
        num_held=num_held,
        prompt_token_history=prompt_token_history,
        output_token_history=output_token_history,
    )


def _known(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


@dataclass(frozen=True, slots=True)
class LlmLoadSample:
    """One LLM version at ``at_s`` on the caller's clock: gauges as of now, cumulative
    counts and histograms since ``lane_id`` started (samples of two lanes are never diffed).
    ``num_waiting`` is the engines' queues only; ``num_held`` is added to it when observed."""

    at_s: float
    lane_id: int
    num_ready: int
    num_starting: int
    num_waiting: int
    num_held: int
    num_running: int
    kv_cache_usage: float | None
    num_slots: int
    num_arrived: float
    prompt_tokens: float
    output_tokens: float
    ttft_s: Histogram
    itl_s: Histogram

    @classmethod
    def of(cls, snapshot: FleetSnapshot, at_s: float) -> LlmLoadSample:
        """The sample of a live LLM version; ``ValueError`` when ``snapshot`` is not one."""
        signals = snapshot.llm
        if signals is None:
            raise ValueError(
                f"{snapshot.deployment} version {snapshot.version} is not an LLM version"
            )
        return cls(
            at_s=at_s,
            lane_id=snapshot.lane_id,
            num_ready=snapshot.num_ready,
            num_starting=snapshot.num_starting,
            num_waiting=signals.num_waiting,
            num_held=signals.num_held,
            num_running=signals.num_running,
            kv_cache_usage=signals.kv_cache_usage,
            num_slots=signals.num_slots,
            num_arrived=snapshot.num_arrived,
            prompt_tokens=signals.prompt_tokens,
            output_tokens=signals.output_tokens,
            ttft_s=signals.ttft_s,
            itl_s=signals.itl_s,
        )


def observe_llm(
    sample: LlmLoadSample,
    previous: LlmLoadSample | None,
    prompt_token_history: Sequence[tuple[float, float]] = (),
    output_token_history: Sequence[tuple[float, float]] = (),
) -> LlmScalingObservation:
    """The observation at ``sample.at_s`` over the interval since ``previous`` (none, or one
    of another lane: an empty interval, so rates are zero and p99s unknown)."""
    span_s = 0.0
    arrived = prompt = output = 0.0
    ttft_p99 = itl_p99 = None
    if previous is not None and previous.lane_id == sample.lane_id:
        span_s = sample.at_s - previous.at_s
        arrived = sample.num_arrived - previous.num_arrived
        prompt = sample.prompt_tokens - previous.prompt_tokens
        output = sample.output_tokens - previous.output_tokens
        ttft_p99 = _interval_quantile(sample.ttft_s, previous.ttft_s)
        itl_p99 = _interval_quantile(sample.itl_s, previous.itl_s)
    return llm_observation(
        sample.at_s,
        span_s,
        num_replicas=sample.num_ready + sample.num_starting,
        num_ready=sample.num_ready,
        num_waiting=sample.num_waiting + sample.num_held,
        num_running=sample.num_running,
        kv_cache_usage=sample.kv_cache_usage,
        num_held=sample.num_held,
        num_arrived=arrived,
        prompt_tokens=prompt,
        output_tokens=output,
        ttft_p99_s=ttft_p99,
        itl_p99_s=itl_p99,
        num_slots=sample.num_slots,
        prompt_token_history=prompt_token_history,
        output_token_history=output_token_history,
    )


def _interval_quantile(later: Histogram, earlier: Histogram) -> float | None:
    """The p99 of the samples recorded between two cumulative histograms of one lane."""
    if later.upper_bounds != earlier.upper_bounds:
        return None
    counts = tuple(max(0, a - b) for a, b in zip(later.counts, earlier.counts, strict=True))
    if not any(counts):
        return None
    between = Histogram(later.upper_bounds, counts, max(0.0, later.total - earlier.total))
    return between.quantile(LATENCY_QUANTILE)
