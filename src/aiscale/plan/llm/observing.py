"""What the simulator shows a token-aware policy: the last interval's latencies and token
rates, and the token histories, as the live controller would read them from its metrics.

Both simulator modes feed ``IntervalStats`` as requests arrive and tokens come out, and ask
it for an ``LlmScalingObservation`` at each decision; the histories are ``CountsHistory``
views (complete bins only, so no future arrival leaks into a decision).
"""

from __future__ import annotations

import math

import numpy as np

from aiscale.plan._simcore import CountsHistory
from aiscale.plan.llm.simconfig import LlmSimConfig, weighted_quantiles
from aiscale.plan.llm.workload import TokenRequests
from aiscale.plan.traffic import FloatArray
from aiscale.scaling.policies.llm_observation import LlmScalingObservation

__all__ = ["IntervalStats", "histories_from_steps", "token_histories"]


class IntervalStats:
    """Arrivals, TTFTs and ITLs since the last decision."""

    def __init__(self) -> None:
        self.since_s = 0.0
        self.arrivals = 0.0
        self.prompt_tokens = 0.0
        self.output_tokens = 0.0
        self.ttfts: list[float] = []
        self.ttft_weights: list[float] = []
        self.itls: list[float] = []
        self.itl_weights: list[float] = []

    def add_arrival(self, prompt: float, output: float, count: float = 1.0) -> None:
        self.arrivals += count
        self.prompt_tokens += prompt
        self.output_tokens += output

    def add_ttft(self, value_s: float, weight: float = 1.0) -> None:
        self.ttfts.append(value_s)
        self.ttft_weights.append(weight)

    def add_itl(self, value_s: float, weight: float) -> None:
        self.itls.append(value_s)
        self.itl_weights.append(weight)

    def reset(self, now_s: float) -> None:
        """Start a new interval at ``now_s``."""
        self.since_s = now_s
        self.arrivals = self.prompt_tokens = self.output_tokens = 0.0
        self.ttfts, self.ttft_weights, self.itls, self.itl_weights = [], [], [], []

    def observation(
        self,
        now_s: float,
        *,
        num_replicas: int,
        num_ready: int,
        num_waiting: int,
        num_running: int,
        kv_cache_usage: float | None,
        num_held: int,
        prompt_history: CountsHistory,
        output_history: CountsHistory,
    ) -> LlmScalingObservation:
        span = max(now_s - self.since_s, 1e-9)
        ttft = weighted_quantiles(self.ttfts, self.ttft_weights, (0.99,))[0]
        itl = weighted_quantiles(self.itls, self.itl_weights, (0.99,))[0]
        return LlmScalingObservation(
            now_s=now_s,
            num_replicas=num_replicas,
            num_ready=num_ready,
            num_starting=num_replicas - num_ready,
            num_waiting=num_waiting,
            num_running=num_running,
            kv_cache_usage=kv_cache_usage,
            ttft_p99_s=None if math.isnan(ttft) else ttft,
            itl_p99_s=None if math.isnan(itl) else itl,
            prompt_tokens_per_s=self.prompt_tokens / span,
            output_tokens_per_s=self.output_tokens / span,
            arrival_rate_per_s=self.arrivals / span,
            num_held=num_held,
            prompt_token_history=prompt_history,
            output_token_history=output_history,
        )


def histories_from_steps(
    prompt_per_step: FloatArray, output_per_step: FloatArray, step_s: float, bin_s: float
) -> tuple[CountsHistory, CountsHistory]:
    """Prompt and output token histories in bins of ``bin_s`` from per-step sums."""
    group = max(1, round(bin_s / step_s))
    num_bins = math.ceil(prompt_per_step.size / group)
    out = []
    for values in (prompt_per_step, output_per_step):
        padded = np.zeros(num_bins * group)
        padded[: values.size] = values
        out.append(CountsHistory(padded.reshape(num_bins, group).sum(axis=1), bin_s, 0.0))
    return out[0], out[1]


def token_histories(
    requests: TokenRequests, config: LlmSimConfig
) -> tuple[CountsHistory, CountsHistory]:
    """``histories_from_steps`` of ``requests`` by arrival time."""
    _, prompt, output, _ = requests.per_step(config.history_bin_s)
    return histories_from_steps(prompt, output, config.history_bin_s, config.history_bin_s)
