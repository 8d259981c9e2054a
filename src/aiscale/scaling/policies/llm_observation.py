"""What a token-aware scaling policy observes of one LLM deployment, and its protocol.

The request/response policies see ``ScalingObservation`` (requests in flight, arrival rate).
An LLM deployment is judged by other signals: requests waiting in the engines' queues, how
full each engine's KV cache is, time to first token and inter-token latency against the SLO,
and tokens per second, prompt and output apart (a prompt token costs a fraction of an
output token's engine time, and the two move independently: a code assistant sends long
prompts and reads short answers). ``LlmScalingObservation`` carries them; the live
controller (from the engines' metrics and the gateway's histograms) and the simulator
(``aiscale.plan.llm``, from its own state) both build it with one function,
``aiscale.scaling.llm_observe.llm_observation``. Decisions are the same ``ScalingDecision``.

Pure values and a protocol: the standard library only (a test loads this package in a
fresh interpreter); no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from aiscale.scaling.policies.base import ScalingDecision

__all__ = ["LlmScalingObservation", "LlmScalingPolicy"]

StateT = TypeVar("StateT")


@dataclass(frozen=True, slots=True)
class LlmScalingObservation:
    """One LLM deployment at ``now_s`` (seconds on the caller's clock).

    Counts: ``num_replicas`` are paid for (ready plus starting, not draining);
    ``num_waiting`` requests wait for a slot (in the engines' queues, plus those the gateway
    holds while no engine is ready: ``num_held``, already inside ``num_waiting``);
    ``num_running`` are being prefilled or decoded. ``kv_cache_usage`` is the mean share of
    the KV cache in use over ready engines (0..1; ``None`` when none is ready).
    Latencies are p99 over the last decision interval, in seconds (``None``: no sample):
    ``ttft_p99_s`` over requests that got their first token in it, ``itl_p99_s`` over
    requests that finished in it, of each one's mean inter-token latency (its time from
    first to last token over its tokens after the first: the TPOT a reader of the stream
    feels, which the gateway knows per request).
    Rates are per second over the last interval. The histories are ``(bin_start_s, tokens)``
    in evenly spaced bins ending at or before ``now_s`` (read-only views; empty when the
    caller keeps none).
    """

    now_s: float
    num_replicas: int
    num_ready: int
    num_starting: int
    num_waiting: int
    num_running: int
    kv_cache_usage: float | None
    ttft_p99_s: float | None
    itl_p99_s: float | None
    prompt_tokens_per_s: float
    output_tokens_per_s: float
    arrival_rate_per_s: float
    num_held: int = 0
    prompt_token_history: Sequence[tuple[float, float]] = ()
    output_token_history: Sequence[tuple[float, float]] = ()

    @property
    def kv_cache_usage_sum(self) -> float:
        """KV-cache use summed over ready engines (a KEDA ``sum()`` query): engines' worth."""
        return (self.kv_cache_usage or 0.0) * self.num_ready

    @property
    def is_idle(self) -> bool:
        """Nothing waiting, running or arriving."""
        return self.num_waiting == 0 and self.num_running == 0 and self.arrival_rate_per_s == 0.0


class LlmScalingPolicy(Protocol[StateT]):
    """A pure token-aware autoscaling policy; ``StateT`` is its own immutable state."""

    def initial_state(self) -> StateT:
        """The state before the first observation."""
        ...

    def decide(
        self, observation: LlmScalingObservation, state: StateT
    ) -> tuple[ScalingDecision, StateT]:
        """The target replica count for ``observation`` and the next state."""
        ...
