"""Predictive scaling: forecast arrivals and start replicas before the load arrives.

The forecast is seasonal-naive with a level correction: the arrival rate over the coming
``startup_s + lookahead_s`` is what the same clock time saw one season ago (one week when the
history covers it, else one day; or the one ``season_s`` configured), scaled by how the last
``level_window_s`` compares with the same stretch one season ago (growth, a slow day).
Without a season of history it falls back to a linear trend over the level window. The peak
forecast rate divided by the replica capacity (requests/s per replica at the target
utilisation) gives the replicas to have now, so that replicas started now are ready when the
load comes.

The policy scores itself: each decision records what it predicts for the bin one start-up
time ahead, and later compares it with what came. While the smoothed relative error is above
``max_forecast_error`` it trusts only the reactive policy. It never asks for fewer replicas
than the reactive policy asks for right now.

Pure: the history arrives in the observation (``arrival_history``, evenly spaced bins); the
policy never reads a clock, does no I/O and uses no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import ScalingDecision, ScalingObservation, clamp_replicas
from aiscale.scaling.policies.reactive import ReactiveConfig, ReactivePolicy, ReactiveState

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S


@dataclass(frozen=True, slots=True)
class PredictiveConfig:
    """Knobs. ``capacity_per_replica_per_s``: requests/s one replica serves at the target
    utilisation; ``None`` derives it from the observed mean service time."""

    reactive: ReactiveConfig = ReactiveConfig()
    capacity_per_replica_per_s: float | None = None
    target_utilization: float = 0.7
    startup_s: float = 60.0
    lookahead_s: float = 60.0
    level_window_s: float = 900.0
    min_level_ratio: float = 0.33
    max_level_ratio: float = 3.0
    max_forecast_error: float = 0.35
    error_smoothing: float = 0.1
    #: Forecast scores needed before the error can switch the forecast off.
    min_scored: int = 5
    #: The one season to look back (s); ``None``: a week when the history covers it, else
    #: a day. A short season suits tests and loads with a known period (a batch job's).
    season_s: float | None = None

    def __post_init__(self) -> None:
        if self.capacity_per_replica_per_s is not None and self.capacity_per_replica_per_s <= 0:
            raise ConfigError("must be > 0 or None", field="capacity_per_replica_per_s")
        if not 0 < self.target_utilization <= 1:
            raise ConfigError("must be in (0, 1]", field="target_utilization")
        if self.startup_s < 0 or self.lookahead_s < 0 or self.level_window_s <= 0:
            raise ConfigError("windows must be >= 0", field="startup_s")
        if not 0 < self.error_smoothing <= 1:
            raise ConfigError("must be in (0, 1]", field="error_smoothing")
        if self.season_s is not None and self.season_s <= 0:
            raise ConfigError("must be > 0 or None", field="season_s")


@dataclass(frozen=True, slots=True)
class PredictiveState:
    reactive: ReactiveState = ReactiveState()
    #: ``(bin_start_s, predicted_rate_per_s)`` waiting for their bin to be complete.
    pending: tuple[tuple[float, float], ...] = ()
    forecast_error: float = 0.0
    num_scored: int = 0


class _Bins:
    """Constant-time lookups in an evenly spaced ``(bin_start_s, count)`` history."""

    def __init__(self, history: Sequence[tuple[float, float]]) -> None:
        self.history = history
        self.start_s = history[0][0]
        self.width_s = history[1][0] - history[0][0] if len(history) > 1 else 60.0
        self.end_s = history[-1][0] + self.width_s

    def covers(self, t0: float, t1: float) -> bool:
        return self.start_s <= t0 and t1 <= self.end_s

    def rates(self, t0: float, t1: float) -> list[float]:
        """Rates per s of the bins overlapping ``[t0, t1)`` (clipped to the history)."""
        first = max(0, int((t0 - self.start_s) // self.width_s))
        last = min(len(self.history), math.ceil((t1 - self.start_s) / self.width_s))
        return [self.history[i][1] / self.width_s for i in range(first, last)]

    def count_at(self, bin_start_s: float) -> float | None:
        index = round((bin_start_s - self.start_s) / self.width_s)
        if 0 <= index < len(self.history):
            return self.history[index][1]
        return None


def _smoothed_peak(rates: list[float]) -> float:
    """Peak of the 3-bin running median (edges repeated): one noisy bin must not buy a
    replica, but a ramp, which lasts, keeps its full height."""
    if len(rates) < 3:
        return max(rates, default=0.0)
    padded = [rates[0], *rates, rates[-1]]
    return max(sorted(padded[i - 1 : i + 2])[1] for i in range(1, len(padded) - 1))


def forecast_peak_rate(
    config: PredictiveConfig, history: Sequence[tuple[float, float]], now_s: float
) -> tuple[float, float, str] | None:
    """``(peak rate over the horizon, rate one start-up ahead, method)`` or ``None``."""
    if len(history) < 2:
        return None
    bins = _Bins(history)
    horizon_end = now_s + config.startup_s + config.lookahead_s
    level_start = now_s - config.level_window_s
    seasons = (
        ((WEEK_S, "weekly"), (DAY_S, "daily"))
        if config.season_s is None
        else ((config.season_s, "seasonal"),)
    )
    for season_s, name in seasons:
        if bins.covers(level_start - season_s, horizon_end - season_s):
            past = sum(bins.rates(level_start - season_s, now_s - season_s))
            recent = sum(bins.rates(level_start, now_s))
            ratio = (recent + 1e-9) / (past + 1e-9)
            ratio = min(max(ratio, config.min_level_ratio), config.max_level_ratio)
            ahead = bins.rates(now_s - season_s, horizon_end - season_s)
            if not ahead:
                continue
            at_startup = bins.rates(
                now_s + config.startup_s - season_s, now_s + config.startup_s - season_s + 1e-6
            )
            point = (at_startup[0] if at_startup else ahead[-1]) * ratio
            return _smoothed_peak(ahead) * ratio, point, f"{name} x{ratio:.2f}"
    recent_rates = bins.rates(level_start, now_s)
    if len(recent_rates) < 2:
        return None
    n = len(recent_rates)
    mean_x = (n - 1) / 2
    mean_y = sum(recent_rates) / n
    cov = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(recent_rates))
    var = sum((i - mean_x) ** 2 for i in range(n))
    slope_per_bin = cov / var
    level = mean_y + slope_per_bin * (n - 1 - mean_x)
    steps = (horizon_end - now_s) / bins.width_s
    peak = max(level, level + slope_per_bin * steps, 0.0)
    point = max(level + slope_per_bin * config.startup_s / bins.width_s, 0.0)
    return peak, point, "trend"


@dataclass(frozen=True, slots=True)
class PredictivePolicy:
    config: PredictiveConfig = PredictiveConfig()

    def initial_state(self) -> PredictiveState:
        return PredictiveState()

    def decide(
        self, observation: ScalingObservation, state: PredictiveState
    ) -> tuple[ScalingDecision, PredictiveState]:
        cfg = self.config
        reactive_decision, reactive_state = ReactivePolicy(cfg.reactive).decide(
            observation, state.reactive
        )
        error, num_scored, pending = self._score(observation, state)
        capacity = cfg.capacity_per_replica_per_s
        if capacity is None and observation.mean_service_time_s:
            capacity = cfg.target_utilization / observation.mean_service_time_s
        forecast = forecast_peak_rate(cfg, observation.arrival_history, observation.now_s)

        def keep(decision: ScalingDecision) -> tuple[ScalingDecision, PredictiveState]:
            return decision, PredictiveState(reactive_state, pending, error, num_scored)

        if forecast is None or capacity is None:
            return keep(ScalingDecision(reactive_decision.target_replicas, "no forecast: reactive"))
        peak_rate, point_rate, method = forecast
        width = observation.arrival_history[1][0] - observation.arrival_history[0][0]
        due = observation.now_s + cfg.startup_s
        due_bin = observation.arrival_history[0][0] + width * math.floor(
            (due - observation.arrival_history[0][0]) / width
        )
        pending = pending + ((due_bin, point_rate),)
        if num_scored >= cfg.min_scored and error > cfg.max_forecast_error:
            return keep(
                ScalingDecision(
                    reactive_decision.target_replicas, f"forecast error {error:.2f}: reactive"
                )
            )
        wanted = math.ceil(peak_rate / capacity - 1e-9)
        target = clamp_replicas(
            max(wanted, reactive_decision.target_replicas),
            cfg.reactive.min_replicas,
            cfg.reactive.max_replicas,
        )
        reason = f"{method} forecast {peak_rate:.1f}/s -> {wanted}"
        if target == reactive_decision.target_replicas and wanted < target:
            reason = reactive_decision.reason
        return keep(ScalingDecision(target, reason))

    def _score(
        self, observation: ScalingObservation, state: PredictiveState
    ) -> tuple[float, int, tuple[tuple[float, float], ...]]:
        """Compare past point forecasts with the bins that have since completed."""
        history = observation.arrival_history
        if len(history) < 2 or not state.pending:
            return state.forecast_error, state.num_scored, state.pending
        bins = _Bins(history)
        error, num_scored = state.forecast_error, state.num_scored
        waiting: list[tuple[float, float]] = []
        floor = (
            1.0
            if self.config.capacity_per_replica_per_s is None
            else (0.5 * self.config.capacity_per_replica_per_s)
        )
        alpha = self.config.error_smoothing
        for bin_start, predicted in state.pending:
            if bin_start + bins.width_s > bins.end_s:
                waiting.append((bin_start, predicted))
                continue
            count = bins.count_at(bin_start)
            if count is None:
                continue
            actual = count / bins.width_s
            relative = abs(predicted - actual) / max(actual, floor)
            error = relative if num_scored == 0 else (1 - alpha) * error + alpha * relative
            num_scored += 1
        return error, num_scored, tuple(waiting)
