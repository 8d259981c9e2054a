"""What the simulator shows a token-aware policy: the last interval's latencies and token
rates, and the token histories, as the live controller would read them from its metrics.

Both simulator modes feed ``IntervalStats`` as requests arrive and tokens come out, and ask
it for an ``LlmScalingObservation`` at each decision; the histories are ``CountsHistory``
views (complete bins only, so no future arrival leaks into a decision). The observation is
made by the live controller's own function (``aiscale.scaling.llm_observe.llm_observation``)
from the interval's counts and p99s, so rates, the KV-cache signal and the meaning of
"waiting" cannot drift apart between what is simulated and what runs.

The exact mode adds one TTFT per request. The aggregated mode has no requests, only a
latency model per step (a prompt-length quantile's service plus an M/G/1 wait: an atom at
zero and an exponential tail); it adds that model (``add_ttft_model``) and the interval's
p99 is the quantile of the whole mixture, as the live histogram's p99 is of every request's
TTFT. (Adding one number per step, the slowest prompt's service plus the wait's own p99,
overstates the p99 by a sixth on long prompts: the two tails rarely meet in one request.)
"""

from __future__ import annotations

import math

import numpy as np

from aiscale.plan._simcore import CountsHistory
from aiscale.plan.llm.simconfig import LlmSimConfig, weighted_quantiles
from aiscale.plan.llm.workload import TokenRequests
from aiscale.plan.traffic import FloatArray
from aiscale.scaling.llm_observe import LATENCY_QUANTILE, llm_observation
from aiscale.scaling.policies.llm_observation import LlmScalingObservation

__all__ = ["IntervalStats", "histories_from_steps", "mixture_quantile", "token_histories"]

#: Points of each of the two grids ``mixture_quantile`` searches.
_GRID = 64


class IntervalStats:
    """Arrivals, TTFTs and ITLs since the last decision."""

    def __init__(self) -> None:
        self.since_s = 0.0
        self.arrivals = 0.0
        self.prompt_tokens = 0.0
        self.output_tokens = 0.0
        self.ttfts: list[float] = []
        self.ttft_weights: list[float] = []
        self.ttft_models: list[tuple[FloatArray, float, float, float]] = []
        self.itls: list[float] = []
        self.itl_weights: list[float] = []

    def add_arrival(self, prompt: float, output: float, count: float = 1.0) -> None:
        self.arrivals += count
        self.prompt_tokens += prompt
        self.output_tokens += output

    def add_ttft(self, value_s: float, weight: float = 1.0) -> None:
        self.ttfts.append(value_s)
        self.ttft_weights.append(weight)

    def add_ttft_model(
        self, base_s: FloatArray, rho: float, tail_mean_s: float, weight: float
    ) -> None:
        """``weight`` requests whose TTFT is one of ``base_s`` (equally likely) plus a wait
        that is 0 with probability ``1 - rho``, else exponential with mean ``tail_mean_s``."""
        if weight > 0:
            self.ttft_models.append((base_s, rho, tail_mean_s, weight))

    def add_itl(self, value_s: float, weight: float) -> None:
        self.itls.append(value_s)
        self.itl_weights.append(weight)

    def reset(self, now_s: float) -> None:
        """Start a new interval at ``now_s``."""
        self.since_s = now_s
        self.arrivals = self.prompt_tokens = self.output_tokens = 0.0
        self.ttfts, self.ttft_weights, self.itls, self.itl_weights = [], [], [], []
        self.ttft_models = []

    def ttft_quantile(self, level: float = LATENCY_QUANTILE) -> float:
        """The ``level`` quantile of the interval's TTFTs, samples and models together
        (``nan``: none)."""
        if not self.ttft_models:
            return weighted_quantiles(self.ttfts, self.ttft_weights, (level,))[0]
        return mixture_quantile(self.ttfts, self.ttft_weights, self.ttft_models, level)

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
        """The live controller's observation (``llm_observation``) of this interval."""
        itl = weighted_quantiles(self.itls, self.itl_weights, (LATENCY_QUANTILE,))[0]
        return llm_observation(
            now_s,
            now_s - self.since_s,
            num_replicas=num_replicas,
            num_ready=num_ready,
            num_waiting=num_waiting,
            num_running=num_running,
            kv_cache_usage=kv_cache_usage,
            num_held=num_held,
            num_arrived=self.arrivals,
            prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            ttft_p99_s=self.ttft_quantile(),
            itl_p99_s=itl,
            prompt_token_history=prompt_history,
            output_token_history=output_history,
        )


def mixture_quantile(
    values: list[float],
    weights: list[float],
    models: list[tuple[FloatArray, float, float, float]],
    level: float,
) -> float:
    """The ``level`` quantile of weighted samples and ``(base_s, rho, tail_mean_s, weight)``
    models together (``IntervalStats.add_ttft_model``): the smallest time with at most ``1 -
    level`` of the weight above it, found on two grids of ``_GRID`` points (within
    ``1 / _GRID**2`` of the range); ``nan`` when the weight is zero."""
    base = np.stack([m[0] for m in models])[:, :, None]
    rho = np.array([m[1] for m in models])[:, None, None]
    tail = np.maximum(np.array([m[2] for m in models]), 1e-12)[:, None, None]
    model_w = np.array([m[3] for m in models])
    sample_v = np.asarray(values, dtype=np.float64)[:, None]
    sample_w = np.asarray(weights, dtype=np.float64)
    total = float(model_w.sum() + sample_w.sum())
    if total <= 0:
        return math.nan
    allowed = (1.0 - level) * total

    def above(t: FloatArray) -> FloatArray:
        """The weight above each time of ``t``."""
        over = np.where(base > t, 1.0, rho * np.exp(-np.maximum(t - base, 0.0) / tail))
        result: FloatArray = model_w @ over.mean(axis=1) + sample_w @ (sample_v > t)
        return result

    low = float(min(base.min(), sample_v.min(initial=math.inf)))
    # Above ``high`` every base is passed and each tail keeps at most (1 - level) of its mass.
    high = float(
        max(base.max() + tail.max() * math.log(1.0 / (1.0 - level)), sample_v.max(initial=0.0))
    )
    for _ in range(2):
        grid = np.linspace(low, high, _GRID)
        index = int(np.argmax(above(grid) <= allowed))  # the first point within the level
        low, high = float(grid[max(index - 1, 0)]), float(grid[index])
    return high


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
