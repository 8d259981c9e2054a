"""Predictive token-aware scaling: forecast prompt and output tokens/s, start replicas ahead.

The request/response predictive policy forecasts requests/s; an LLM replica is busy by
tokens, and prompt and output tokens cost different engine time and move independently
(a burst of long documents to summarise doubles the prompt tokens and leaves the output
tokens flat). This policy forecasts each stream with the same forecaster
(``predictive.forecast_peak_rate``: seasonal-naive with a level correction when a season of
history exists, a linear trend over ``level_window_s`` otherwise), over the horizon a replica
started now needs to be ready (``startup_s + lookahead_s``), raises each peak by a headroom,
and converts the two with the replica's capacity at the SLO (``replicas_for_tokens``).

The headroom is measured, not fixed (``measured_headroom``): ``burst_sigmas`` times the
root mean square of the load's change from one history bin to the next over the level
window, relative to its mean, at most ``max_headroom``. A forecast sees the level, the
trend and the season, not how far the load moves within a bin or two of its horizon; that
movement is what replicas started ahead must absorb. Smooth traffic at scale (thousands of
requests a minute) gets a few percent, a small or bursty deployment more; a fixed margin
(this policy used 10%) is too much for the first and too little for the second.
``headroom`` set to a number restores a fixed margin.

It never asks for fewer replicas than the SLO policy asks for now
(its floor: observed load, backlog, KV use and p99 feedback), so a forecast that misses a
burst costs what the reactive policy would have cost, not the SLO.

Pure: the histories travel in the observation; no clock, no I/O, no randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import ScalingDecision
from aiscale.scaling.policies.llm_capacity import replicas_for_tokens
from aiscale.scaling.policies.llm_observation import LlmScalingObservation
from aiscale.scaling.policies.llm_slo import LlmSloConfig, LlmSloState, next_correction, slo_wish
from aiscale.scaling.policies.llm_window import settle
from aiscale.scaling.policies.predictive import PredictiveConfig, forecast_peak_rate

__all__ = ["LlmPredictiveConfig", "LlmPredictivePolicy", "measured_headroom"]


@dataclass(frozen=True, slots=True)
class LlmPredictiveConfig:
    """The SLO policy's config (the floor, the capacity, the damping) and the forecast's."""

    slo: LlmSloConfig
    startup_s: float = 60.0
    lookahead_s: float = 60.0
    level_window_s: float = 900.0
    #: The one season to look back (s); ``None``: a week when covered, else a day.
    season_s: float | None = None
    #: A fixed share added to the forecast peaks; ``None``: measured (``measured_headroom``).
    headroom: float | None = None
    #: The measured headroom: this many RMS bin-to-bin changes of the load (2.0: a change
    #: twice the typical one is still covered; the request/response forecaster's choice).
    burst_sigmas: float = 2.0
    #: The measured headroom's bound (0.5: one wild bin never buys half again for long).
    max_headroom: float = 0.5

    def __post_init__(self) -> None:
        if self.startup_s < 0 or self.lookahead_s < 0 or self.level_window_s <= 0:
            raise ConfigError("windows must be >= 0 (level window > 0)", field="startup_s")
        if self.headroom is not None and not (self.headroom >= 0 and math.isfinite(self.headroom)):
            raise ConfigError("must be a finite number >= 0 or None", field="headroom")
        for name in ("burst_sigmas", "max_headroom"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError("must be a finite number >= 0", field=name)
        if self.season_s is not None and self.season_s <= 0:
            raise ConfigError("must be > 0 or None", field="season_s")

    def forecaster(self) -> PredictiveConfig:
        """The request/response forecaster's config with this one's windows."""
        return PredictiveConfig(
            startup_s=self.startup_s,
            lookahead_s=self.lookahead_s,
            level_window_s=self.level_window_s,
            season_s=self.season_s,
        )


def measured_headroom(config: LlmPredictiveConfig, observation: LlmScalingObservation) -> float:
    """The share added to the forecast peaks (module docstring): over the complete history
    bins of the last ``level_window_s``, each bin's load in replicas
    (``replicas_for_tokens`` of its prompt and output rates, at full utilisation), then
    ``burst_sigmas * RMS(change between neighbouring bins) / mean load``, at most
    ``max_headroom``; 0 with fewer than three bins or no load."""
    if config.headroom is not None:
        return config.headroom
    prompt, output = observation.prompt_token_history, observation.output_token_history
    n = min(len(prompt), len(output))
    if n < 3:
        return 0.0
    width = prompt[1][0] - prompt[0][0]
    if width <= 0:
        return 0.0
    first = max(0, n - 1 - math.ceil(config.level_window_s / width))
    capacity = config.slo.capacity
    load = [
        replicas_for_tokens(
            capacity, prompt[i][1] / width, output[i][1] / width, target_utilization=1.0
        )
        for i in range(first, n)
    ]
    mean = sum(load) / len(load)
    if len(load) < 3 or mean <= 0:
        return 0.0
    changes = [b - a for a, b in zip(load, load[1:], strict=False)]
    rms = math.sqrt(sum(c * c for c in changes) / len(changes))
    return min(config.burst_sigmas * rms / mean, config.max_headroom)


@dataclass(frozen=True, slots=True)
class LlmPredictivePolicy:
    """Forecast tokens/s (prompt and output apart); floor: the SLO policy."""

    config: LlmPredictiveConfig

    def initial_state(self) -> LlmSloState:
        return LlmSloState()

    def decide(
        self, observation: LlmScalingObservation, state: LlmSloState
    ) -> tuple[ScalingDecision, LlmSloState]:
        cfg = self.config
        correction = next_correction(cfg.slo, observation, state.correction)
        floor, why = slo_wish(cfg.slo, observation, correction)
        forecaster = cfg.forecaster()
        now = observation.now_s
        prompt = forecast_peak_rate(forecaster, observation.prompt_token_history, now)
        output = forecast_peak_rate(forecaster, observation.output_token_history, now)
        wish = floor
        if prompt is not None and output is not None:
            headroom = measured_headroom(cfg, observation)
            ahead = replicas_for_tokens(
                cfg.slo.capacity,
                prompt[0] * (1.0 + headroom),
                output[0] * (1.0 + headroom),
                target_utilization=cfg.slo.target_utilization,
            )
            forecast = max(0, math.ceil(ahead * correction - 1e-9))
            if forecast > floor:
                wish = forecast
                why = f"forecast {prompt[2]} +{headroom:.0%}: {ahead:.2f} (x{correction:.2f})"
        decision, window = settle(cfg.slo.window, observation, wish, state.window, why)
        return decision, replace(state, correction=correction, window=window)
