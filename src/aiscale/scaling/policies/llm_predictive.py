"""Predictive token-aware scaling: forecast prompt and output tokens/s, start replicas ahead.

The request/response predictive policy forecasts requests/s; an LLM replica is busy by
tokens, and prompt and output tokens cost different engine time and move independently
(a burst of long documents to summarise doubles the prompt tokens and leaves the output
tokens flat). This policy forecasts each stream with the same forecaster
(``predictive.forecast_peak_rate``: seasonal-naive with a level correction when a season of
history exists, a linear trend over ``level_window_s`` otherwise), over the horizon a replica
started now needs to be ready (``startup_s + lookahead_s``), raises each peak by
``headroom``, and converts the two with the replica's capacity at the SLO
(``replicas_for_tokens``). It never asks for fewer replicas than the SLO policy asks for now
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

__all__ = ["LlmPredictiveConfig", "LlmPredictivePolicy"]


@dataclass(frozen=True, slots=True)
class LlmPredictiveConfig:
    """The SLO policy's config (the floor, the capacity, the damping) and the forecast's."""

    slo: LlmSloConfig
    startup_s: float = 60.0
    lookahead_s: float = 60.0
    level_window_s: float = 900.0
    #: The one season to look back (s); ``None``: a week when covered, else a day.
    season_s: float | None = None
    headroom: float = 0.1

    def __post_init__(self) -> None:
        if self.startup_s < 0 or self.lookahead_s < 0 or self.level_window_s <= 0:
            raise ConfigError("windows must be >= 0 (level window > 0)", field="startup_s")
        if not (self.headroom >= 0 and math.isfinite(self.headroom)):
            raise ConfigError("must be a finite number >= 0", field="headroom")
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
            ahead = replicas_for_tokens(
                cfg.slo.capacity,
                prompt[0] * (1.0 + cfg.headroom),
                output[0] * (1.0 + cfg.headroom),
                target_utilization=cfg.slo.target_utilization,
            )
            forecast = max(0, math.ceil(ahead * correction - 1e-9))
            if forecast > floor:
                wish, why = forecast, f"forecast {prompt[2]}: {ahead:.2f} (x{correction:.2f})"
        decision, window = settle(cfg.slo.window, observation, wish, state.window, why)
        return decision, replace(state, correction=correction, window=window)
