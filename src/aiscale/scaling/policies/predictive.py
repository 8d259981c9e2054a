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

Burst headroom comes from the recent misses, not from a fixed margin: the forecast peak is
raised by ``burst_sigmas`` times the root mean square of the shortfalls scored over the
last ``residual_window_s`` (what came above what was forecast beyond counting noise, per
second), at most ``max_burst_headroom`` of the peak. On smooth traffic the shortfalls are
nil and so is the headroom; on bursty traffic it grows with the bursts.

With ``guard`` set (``make_policy`` and the planner always set it) the reactive floor is the
guarded reactive rule (``guard.py``), so a queue that builds during a burst cannot run the
floor away, and the forecast's own wish is held to the same step limit and bounds and to
the demand ceiling (but not to the backlog rule, which judges queue-driven scale-up). The
ceiling a seasonal forecast's wish is held to is that of the forecast rate when it is higher
than the observed one (``is_ceiling_from_forecast``): starting replicas before a burst that
comes every day is the point of forecasting, and those replicas are for the rate due when
they are ready. A trend forecast is held to the observed rate's ceiling. The guard's
capacity, target utilisation, start-up time and bounds are this config's own (and its
reactive config's bounds), whatever ``guard`` holds for them.

Pure: the history arrives in the observation (``arrival_history``, evenly spaced bins); the
policy never reads a clock, does no I/O and uses no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import (
    ScalingDecision,
    ScalingObservation,
    ScalingPolicy,
    clamp_replicas,
)
from aiscale.scaling.policies.ceiling import demand_ceiling
from aiscale.scaling.policies.guard import (
    DemandAssessment,
    GuardConfig,
    GuardedPolicy,
    GuardState,
    guard_target,
)
from aiscale.scaling.policies.reactive import ReactiveConfig, ReactivePolicy, ReactiveState

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
#: A shortfall within this many Poisson standard deviations of the forecast is noise.
NOISE_SIGMAS = 2.0


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
    #: Burst headroom: this many root-mean-square residuals over the forecast peak. 2.0: a
    #: miss as large as two typical ones is still covered.
    burst_sigmas: float = 2.0
    #: The headroom's bound, as a fraction of the forecast peak (0.5: never more than half
    #: again), so one wild bin cannot buy a fleet for a day.
    max_burst_headroom: float = 0.5
    #: How far back (s) the headroom's residuals reach: half an hour, long enough to hold
    #: a few bursts, short enough to forget a morning's bursts by a quiet afternoon.
    residual_window_s: float = 1800.0
    #: The platform's guard (module docstring); ``None``: the bare reactive floor.
    guard: GuardConfig | None = None
    #: Whether a seasonal forecast's wish is held to the ceiling of the forecast rate (the
    #: rate due when replicas started now are ready) rather than of the rate seen now.
    #: ``False`` holds every wish to the observed rate's ceiling, which forbids starting
    #: replicas ahead of a known burst.
    is_ceiling_from_forecast: bool = True

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
        if not self.burst_sigmas >= 0:
            raise ConfigError("must be >= 0", field="burst_sigmas")
        if not self.max_burst_headroom >= 0:
            raise ConfigError("must be >= 0", field="max_burst_headroom")
        if not self.residual_window_s > 0:
            raise ConfigError("must be > 0", field="residual_window_s")


@dataclass(frozen=True, slots=True)
class PredictiveState:
    #: The reactive floor's state: ``ReactiveState``, or ``GuardState[ReactiveState]`` when
    #: the policy is guarded.
    reactive: ReactiveState | GuardState[ReactiveState] = ReactiveState()
    #: ``(bin_start_s, predicted_rate_per_s)`` waiting for their bin to be complete.
    pending: tuple[tuple[float, float], ...] = ()
    forecast_error: float = 0.0
    num_scored: int = 0
    #: ``(bin_start_s, shortfall per second)`` of the forecasts scored within the last
    #: ``residual_window_s`` (one per decision, so a bin may hold several): how far what
    #: came exceeded the forecast beyond its counting noise, ``max(actual - forecast -
    #: NOISE_SIGMAS * sqrt(forecast / bin_s), 0)``. Only shortfalls count: a burst forecast
    #: that did not come is the error score's business and must not buy replicas; and the
    #: Poisson noise of a bin is what the target utilisation already absorbs.
    residuals: tuple[tuple[float, float], ...] = ()


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
    # The level compares the same stretch of bins now and one season ago. The history ends
    # at the last complete bin, which may be before ``now_s``: the season-ago stretch ends
    # there too, or it would hold one bin more and bias the ratio low (by 1/16 for a
    # 15-minute window of 1-minute bins).
    level_end = min(now_s, bins.end_s)
    for season_s, name in seasons:
        if bins.covers(level_start - season_s, horizon_end - season_s):
            past = sum(bins.rates(level_start - season_s, level_end - season_s))
            recent = sum(bins.rates(level_start, level_end))
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


def _with_forecast_ceiling(
    assessment: DemandAssessment, forecast_rate_per_s: float, guard: GuardConfig
) -> DemandAssessment:
    """``assessment`` with its ceiling raised to what the forecast rate can use: replicas
    started for a seasonal forecast are for the rate due when they are ready, not the rate
    seen now (a trend forecast is not trusted so: it extrapolates a burst's own rise)."""
    if assessment.ceiling is None or assessment.capacity_per_s is None:
        return assessment
    forecast_ceiling = demand_ceiling(
        forecast_rate_per_s, assessment.capacity_per_s, headroom=guard.ceiling_headroom
    )
    return replace(assessment, ceiling=max(assessment.ceiling, forecast_ceiling))


def burst_headroom_per_s(
    config: PredictiveConfig, residuals: Sequence[tuple[float, float]], peak: float
) -> float:
    """Requests/s added to the forecast peak: ``burst_sigmas`` times the root mean square
    of the recent shortfalls (``PredictiveState.residuals``), at most ``max_burst_headroom *
    peak`` (0 before any forecast was scored)."""
    if not residuals:
        return 0.0
    rms = math.sqrt(sum(r * r for _, r in residuals) / len(residuals))
    return min(config.burst_sigmas * rms, config.max_burst_headroom * max(peak, 0.0))


@dataclass(frozen=True, slots=True)
class PredictivePolicy:
    config: PredictiveConfig = PredictiveConfig()

    def _floor(self) -> ScalingPolicy[Any]:
        """The reactive floor: the bare rule, or the rule under the guard of
        ``_guard_config``."""
        reactive = ReactivePolicy(self.config.reactive)
        guard = self._guard_config()
        return reactive if guard is None else GuardedPolicy(reactive, guard)

    def _guard_config(self) -> GuardConfig | None:
        cfg = self.config
        if cfg.guard is None:
            return None
        return replace(
            cfg.guard,
            capacity_per_replica_per_s=cfg.capacity_per_replica_per_s,
            target_utilization=cfg.target_utilization,
            startup_s=cfg.startup_s,
            min_replicas=cfg.reactive.min_replicas,
            max_replicas=cfg.reactive.max_replicas,
        )

    def initial_state(self) -> PredictiveState:
        return PredictiveState(reactive=self._floor().initial_state())

    def decide(
        self, observation: ScalingObservation, state: PredictiveState
    ) -> tuple[ScalingDecision, PredictiveState]:
        cfg = self.config
        reactive_decision, reactive_state = self._floor().decide(observation, state.reactive)
        error, num_scored, pending, residuals = self._score(observation, state)
        capacity = cfg.capacity_per_replica_per_s
        if capacity is None and observation.mean_service_time_s:
            capacity = cfg.target_utilization / observation.mean_service_time_s
        forecast = forecast_peak_rate(cfg, observation.arrival_history, observation.now_s)

        def keep(decision: ScalingDecision) -> tuple[ScalingDecision, PredictiveState]:
            return decision, PredictiveState(
                reactive_state, pending, error, num_scored, residuals
            )

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
        headroom = burst_headroom_per_s(cfg, residuals, peak_rate)
        wanted = math.ceil((peak_rate + headroom) / capacity - 1e-9)
        reason = f"{method} forecast {peak_rate:.1f}/s + {headroom:.1f}/s headroom -> {wanted}"
        guard = self._guard_config()
        if guard is not None and isinstance(reactive_state, GuardState):
            assessment = reactive_state.assessment
            if assessment is not None:
                if cfg.is_ceiling_from_forecast and method != "trend":
                    assessment = _with_forecast_ceiling(assessment, peak_rate, guard)
                guarded, note = guard_target(
                    guard, wanted, observation, assessment, is_queue_driven=False
                )
                if note:
                    reason = f"{reason}; {note}"
                wanted = guarded
        target = clamp_replicas(
            max(wanted, reactive_decision.target_replicas),
            cfg.reactive.min_replicas,
            cfg.reactive.max_replicas,
        )
        if target == reactive_decision.target_replicas and wanted < target:
            reason = reactive_decision.reason
        return keep(ScalingDecision(target, reason))

    def _score(
        self, observation: ScalingObservation, state: PredictiveState
    ) -> tuple[float, int, tuple[tuple[float, float], ...], tuple[tuple[float, float], ...]]:
        """Compare past point forecasts with the bins that have since completed; returns the
        smoothed relative error, the number scored, the forecasts still waiting and the last
        residuals within ``residual_window_s``."""
        history = observation.arrival_history
        if len(history) < 2 or not state.pending:
            return state.forecast_error, state.num_scored, state.pending, state.residuals
        bins = _Bins(history)
        error, num_scored = state.forecast_error, state.num_scored
        residuals = list(state.residuals)
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
            noise = NOISE_SIGMAS * math.sqrt(max(predicted, 0.0) / bins.width_s)
            residuals.append((bin_start, max(actual - predicted - noise, 0.0)))
        since = observation.now_s - self.config.residual_window_s
        kept = tuple(r for r in residuals if r[0] >= since)
        return error, num_scored, tuple(waiting), kept
