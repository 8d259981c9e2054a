"""The live monitor: the pure monitoring policies fed from the fleet on an injected clock.

What it does: every ``interval_s`` (``clock.monotonic``) ``LiveMonitor`` samples each
deployment and version of the ``Fleet`` (``sampler.py``) into the embedded history
(``InMemoryMetricsStore``, tiers and retention from the config), scores each deployment's
series with its own streaming anomaly detector (the ``aiscale detect`` code), counts good
and bad requests for each SLO and evaluates its multiwindow burn rates, feeds arrivals to a
seasonal forecaster, estimates when the queue would saturate, and hands all of it as signals
to the alert engine, with the number of failed checks of the data-quality window
(``QualityFailures``, ``data_quality_failed``), and counts the requests that named no
deployment (``UnknownModelCount``, per interval). Notifications go to the log and the
configured webhooks (in tasks it owns); actions go to ``ActionRunner``. Timestamps in the
store are the clock's wall time (unix seconds); intervals use its monotonic time. A test
drives the whole loop with a ``ManualClock``.

What it must never do: hold the gateway (it sees the serving side only through the ``Fleet``
it is given), add work to the request path (it reads counters the fleet keeps anyway), block
the event loop on I/O, let one failed tick stop the loop, or grow without bound (series,
detectors and alerts are bounded; a removed deployment's state is dropped).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from aiscale.contracts.clock import Clock, SystemClock
from aiscale.contracts.fleet import Fleet
from aiscale.contracts.histogram import Histogram
from aiscale.errors import InvalidInput, Overloaded
from aiscale.monitor.actions import ActionRunner, RolloutCommands
from aiscale.monitor.alert_log import AlertLog
from aiscale.monitor.alerts import (
    ActionDecision,
    AlertEngine,
    AlertInputs,
    AlertState,
    Notification,
    Signal,
    Silence,
    anomaly_signal,
    capacity_signal,
)
from aiscale.monitor.anomaly import StreamingDetector, make_detector
from aiscale.monitor.capacity import (
    CapacityWarning,
    capacity_warning,
    is_arrival_rate_settling,
    trend_warning,
)
from aiscale.monitor.config import MonitorConfig, SloConfig
from aiscale.monitor.forecast import ForecastConfig, SeasonalForecaster
from aiscale.monitor.history import Aggregation, InMemoryMetricsStore
from aiscale.monitor.notifiers import LogNotifier, NotificationFailed, Notifier, WebhookNotifier
from aiscale.monitor.prometheus import PrometheusError, PrometheusReader
from aiscale.monitor.sampler import DeploymentSample, FleetSampler
from aiscale.monitor.slo import RollingCounts, Slo, SloStatus, evaluate

__all__ = ["UNKNOWN_MODEL_SERIES", "LiveMonitor", "QualityFailures", "UnknownModelCount"]

logger = logging.getLogger(__name__)

#: Notification deliveries in flight at once; past this a notification is logged and dropped.
MAX_PENDING_NOTIFICATIONS = 64
MAX_SILENCES = 1000
#: The stored series of requests per interval that named no deployment (no labels).
UNKNOWN_MODEL_SERIES = "unknown_model_requests"


class UnknownModelCount(Protocol):
    """The gateway's count of requests naming a model it does not serve."""

    def num_unknown_model_requests(self) -> int:
        """Such requests so far (cumulative; the monitor diffs it once per tick)."""
        ...


class QualityFailures(Protocol):
    """The data-quality windows as the monitor reads them (``data.quality_window``)."""

    def num_failed(self, deployment: str) -> int | None:
        """Failed checks in the last check of ``deployment``; ``None`` without a window."""
        ...


def count_at_most(histogram: Histogram, threshold: float) -> float:
    """Samples at or under ``threshold``, linear inside the bucket that straddles it."""
    bounds = histogram.upper_bounds
    total = 0.0
    lower = 0.0
    for index, count in enumerate(histogram.counts):
        if index == len(bounds):  # the overflow bucket is above every bound
            break
        upper = bounds[index]
        if upper <= threshold:
            total += count
        else:
            if threshold > lower and count:
                total += count * (threshold - lower) / (upper - lower)
            break
        lower = upper
    return total


@dataclass
class _SloTracker:
    """One SLO: its rolling good/total counts and its latest status."""

    config: SloConfig
    slo: Slo
    counts: RollingCounts
    status: SloStatus | None = None

    @classmethod
    def of(cls, config: SloConfig, interval_s: float) -> _SloTracker:
        slo = config.to_slo()
        # Buckets fine enough for the shortest window, and at most ~50k of them per SLO.
        bucket_s = max(interval_s, min(slo.windows_s) / 10.0, slo.window_s / 50_000.0)
        return cls(config, slo, RollingCounts(max(slo.windows_s), bucket_s))

    def add(self, sample: DeploymentSample) -> None:
        if self.slo.kind == "availability":
            total = float(sample.num_requests)
            good = float(sample.num_requests - sample.num_errors)
        else:
            total = float(sample.latency_s.num_samples)
            threshold = self.slo.latency_threshold_s or 0.0
            good = min(total, count_at_most(sample.latency_s, threshold))
        self.counts.add(sample.t_s, total, good)


@dataclass
class _ArrivalForecast:
    """Arrivals of one deployment folded into bins for its ``SeasonalForecaster``."""

    forecaster: SeasonalForecaster
    bin_index: int | None = None
    count: float = 0.0
    is_first_bin: bool = True

    def add(self, t_s: float, num_requests: float) -> None:
        step = self.forecaster.config.step_s
        k = math.floor(t_s / step)
        if self.bin_index is None:
            self.bin_index = k
        if k > self.bin_index:
            # The first bin began before the monitor did: it is partial, so it is not learnt.
            if not self.is_first_bin:
                self.forecaster.update(self.bin_index * step, self.count)
            self.is_first_bin = False
            self.bin_index, self.count = k, 0.0
        self.count += num_requests


@dataclass
class _DeploymentState:
    forecast: _ArrivalForecast
    detectors: dict[str, StreamingDetector]
    capacity_per_s: float | None = None
    warning: CapacityWarning | None = None
    #: The latest interval's series (``DeploymentSample.values``), for the dashboard's cards.
    latest: dict[str, float] | None = None


class LiveMonitor:
    """Owned by the composition root (the gateway): ``start`` after the deployments are up,
    ``stop`` before they stop. ``rollouts`` and ``quality`` are optional: without them the
    rollout actions are skipped and no ``data_quality_failed`` signal is made; without
    ``unknown_models`` no unknown-model count is kept."""

    def __init__(self, fleet: Fleet, config: MonitorConfig, *,
                 rollouts: RolloutCommands | None = None,
                 quality: QualityFailures | None = None,
                 unknown_models: UnknownModelCount | None = None,
                 clock: Clock | None = None) -> None:
        self.fleet = fleet
        self.config = config
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._quality = quality
        self._unknown_models = unknown_models
        self._num_unknown_seen = 0
        #: Requests that named no deployment in the latest interval (``None``: not counted).
        self.num_unknown_model_requests_last: int | None = None
        self.store = InMemoryMetricsStore(config.to_tiers(), max_series=config.max_series)
        self._sampler = FleetSampler()
        self._slos = [_SloTracker.of(c, config.interval_s) for c in config.slos]
        self._deployments: dict[str, _DeploymentState] = {}
        self.engine = AlertEngine([r.to_rule() for r in config.rules],
                                  group_wait_s=config.group_wait_s,
                                  repeat_interval_s=config.repeat_interval_s)
        self.alert_state: AlertState | None = None
        self.alerts = AlertLog()
        self.silences: dict[str, Silence] = {}
        self._num_silences = 0
        self.actions = ActionRunner(fleet, config.actions, config.audit_path,
                                    clock=self._clock, rollouts=rollouts)
        self._webhooks = [WebhookNotifier(w.url, headers=dict(w.headers))
                          for w in config.webhooks]
        self._notifiers: list[Notifier] = [LogNotifier(logger), *self._webhooks]
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.last_t_s: float | None = None
        #: Wall-clock unix s at ``start`` (``None`` before): no history is older than this.
        self.started_at_s: float | None = None
        self.num_ticks = 0
        #: Seconds the last tick took (the monitor's own cost, on the event loop).
        self.last_tick_cost_s = 0.0

    # ----- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        now = self._clock.time()
        self.started_at_s = now
        for silence in self.config.silences:
            self.add_silence(silence.to_silence(now))
        # Prime the counters: the first interval starts now, not when the server started.
        self._sampler.sample(self.fleet, now, self.config.interval_s)
        if self._unknown_models is not None:
            self._num_unknown_seen = self._unknown_models.num_unknown_model_requests()
        self._loop_task = asyncio.create_task(self._run(), name="live-monitor")
        if self.config.prometheus_url is not None:
            self._spawn(self._check_prometheus(self.config.prometheus_url), "check-prometheus")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for webhook in self._webhooks:
            await webhook.aclose()

    async def _run(self) -> None:
        clock = self._clock
        interval = self.config.interval_s
        last = next_at = clock.monotonic()
        while True:
            next_at += interval
            await clock.sleep(max(0.0, next_at - clock.monotonic()))
            now = clock.monotonic()
            if now - next_at > interval:
                next_at = now  # fell behind (a busy loop): skip the missed ticks, no burst
            dt, last = now - last, now
            try:
                self.tick(dt)
            except Exception:  # a task boundary: one bad tick must not end monitoring
                logger.exception("monitor tick failed")
            self.last_tick_cost_s = clock.monotonic() - now

    # ----- one tick -------------------------------------------------------------------
    def tick(self, dt_s: float) -> None:
        """Sample, store, score, evaluate and alert once; ``dt_s``: seconds since the last."""
        t = self._clock.time()
        if self.last_t_s is not None and t <= self.last_t_s:
            t = self.last_t_s + 1e-3  # the wall clock stepped back: keep the store ordered
        self.last_t_s = t
        self.num_ticks += 1
        samples = self._sampler.sample(self.fleet, t, max(dt_s, 1e-3))
        signals: list[Signal] = []
        totals: dict[str, DeploymentSample] = {}
        for sample in samples:
            labels = {"deployment": sample.deployment, "version": sample.version}
            values = sample.values()
            for name, value in values.items():
                self.store.append(name, labels, t, value)
            if sample.version == "*":
                totals[sample.deployment] = sample
                signals.extend(self._deployment_signals(sample, values, labels))
        for name in [n for n in self._deployments if n not in totals]:
            del self._deployments[name]
        signals.extend(self._slo_signals(totals, t))
        if self._unknown_models is not None:
            total = self._unknown_models.num_unknown_model_requests()
            num_unknown = max(0, total - self._num_unknown_seen)
            self._num_unknown_seen = total
            self.num_unknown_model_requests_last = num_unknown
            self.store.append(UNKNOWN_MODEL_SERIES, {}, t, float(num_unknown))
        step = self.engine.step(
            AlertInputs(tuple(signals), tuple(self.silences.values())), self.alert_state, t)
        self.alert_state = step.state
        for record in self.alerts.update(step.state, self.engine, t):
            if self.actions.shed_causes.get(record.deployment) == (record.rule,
                                                                   record.deployment):
                self._spawn(self.actions.end_shedding(
                    record.deployment, t, f"{record.rule}: resolved"), "end-shedding")
        for notification in step.notifications:
            self._notify(notification)
        for decision in step.actions:
            self._spawn(self._act(decision), f"action-{decision.action}")
        self._expire_silences(t)

    def _deployment_signals(self, sample: DeploymentSample, values: dict[str, float],
                            labels: dict[str, str]) -> list[Signal]:
        name, t = sample.deployment, sample.t_s
        state = self._deployments.get(name)
        if state is None:
            f = self.config.forecast
            forecaster = SeasonalForecaster(ForecastConfig(
                step_s=f.step_s, level_window_s=max(f.step_s, 3600.0), max_horizon_s=f.horizon_s))
            state = self._deployments[name] = _DeploymentState(_ArrivalForecast(forecaster), {})
        signals = [Signal(f"value:{k}", name, v, t) for k, v in values.items()]
        anomaly = self.config.anomaly
        for series in anomaly.series:
            value = values.get(series)
            if value is None:
                continue
            detector = state.detectors.get(series)
            if detector is None:
                detector = state.detectors[series] = make_detector(anomaly.detector,
                                                                   **anomaly.params)
            score = detector.update(t, value)
            self.store.append(f"anomaly_score:{series}", labels, t, score)
            signals.append(anomaly_signal(series, name, score, t))
        state.forecast.add(t, sample.num_requests)
        if sample.capacity_per_s is not None:
            old = state.capacity_per_s
            state.capacity_per_s = (sample.capacity_per_s if old is None
                                    else old + 0.2 * (sample.capacity_per_s - old))
        state.warning = self._capacity(name, state, sample, t)
        state.latest = values
        signals.append(capacity_signal(name, state.warning, t))
        # ``None``: no quality section
        num_failed = self._quality.num_failed(name) if self._quality is not None else None
        if num_failed is not None:
            signals.append(Signal("data_quality_failed", name, float(num_failed), t))
        return signals

    def _capacity(self, name: str, state: _DeploymentState, sample: DeploymentSample,
                  t: float) -> CapacityWarning | None:
        """The earliest of the forecast's and the recent trend's saturation times."""
        capacity = state.capacity_per_s
        if capacity is None or capacity <= 0:
            return None
        queue_free = float(max(0, sample.max_queue - sample.queue_depth))
        window = self.config.forecast.trend_window_s
        points = self.store.query("rps", {"deployment": name, "version": "*"}, t - window,
                                  t + 1.0, self.config.interval_s)
        if is_arrival_rate_settling([p[1] for p in points]):
            return None  # idle or falling now: no queue is about to fill (issue 18)
        found: list[CapacityWarning] = []
        forecaster = state.forecast.forecaster
        if forecaster.num_bins_seen > 0:
            f = self.config.forecast
            w = capacity_warning(forecaster.forecast(f.horizon_s, f.coverage), capacity, t,
                                 queue_free=queue_free)
            if w is not None:
                found.append(w)
        if len(points) >= 10:
            # A line fitted to the last few minutes says little about the next hours: it is
            # extrapolated only as far ahead as the window it was fitted to.
            w = trend_warning([p[0] for p in points], [p[1] for p in points], capacity, t,
                              window, queue_free=queue_free)
            if w is not None:
                found.append(w)
        return min(found, key=lambda w: w.saturates_in_s, default=None)

    def _slo_signals(self, totals: dict[str, DeploymentSample], t: float) -> list[Signal]:
        by_deployment: dict[str, list[SloStatus]] = {}
        signals: list[Signal] = []
        for tracker in self._slos:
            sample = totals.get(tracker.slo.deployment)
            if sample is None:
                continue
            tracker.add(sample)
            status = evaluate(tracker.slo, tracker.counts.counts(t, tracker.slo.windows_s), t)
            tracker.status = status
            by_deployment.setdefault(tracker.slo.deployment, []).append(status)
            label, name = tracker.config.label, tracker.slo.deployment
            signals += [Signal(f"slo_page:{label}", name, float(status.is_paging), t),
                        Signal(f"slo_ticket:{label}", name, float(status.is_ticketing), t),
                        Signal(f"slo_budget_remaining:{label}", name, status.budget_remaining, t)]
        for name, statuses in by_deployment.items():
            signals += [
                Signal("slo_page", name, float(any(s.is_paging for s in statuses)), t),
                Signal("slo_ticket", name, float(any(s.is_ticketing for s in statuses)), t),
                Signal("slo_budget_remaining", name,
                       min(s.budget_remaining for s in statuses), t)]
        return signals

    @staticmethod
    async def _check_prometheus(url: str) -> None:
        """Says at start-up, in the log, when the configured Prometheus cannot be read (the
        history endpoint would fail with the same message); the server runs on regardless."""
        reader = PrometheusReader(url, timeout=httpx.Timeout(5.0))
        try:
            await reader.query("1")
        except PrometheusError as exc:
            logger.error("monitor history: %s", exc.message)
        finally:
            await reader.aclose()

    # ----- notifications, actions, silences ---------------------------------------------
    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _act(self, decision: ActionDecision) -> None:
        await self.actions.run(decision)

    def _notify(self, notification: Notification) -> None:
        for notifier in self._notifiers:
            if len(self._tasks) >= MAX_PENDING_NOTIFICATIONS:
                logger.error("too many notifications in flight; dropped one for %s",
                             notification.group)
                return
            self._spawn(self._deliver(notifier, notification), "notify")

    @staticmethod
    async def _deliver(notifier: Notifier, notification: Notification) -> None:
        try:
            await notifier.send(notification)
        except NotificationFailed as exc:
            logger.warning("notification for %s not delivered: %s", notification.group,
                           exc.message)

    def add_silence(self, silence: Silence) -> str:
        """Mute matching alerts until the silence ends; returns its id."""
        if len(self.silences) >= MAX_SILENCES:
            raise Overloaded(f"{MAX_SILENCES} silences are in force", retry_after_s=60.0,
                             field="silences")
        self._num_silences += 1
        silence_id = f"s{self._num_silences}"
        self.silences[silence_id] = silence
        return silence_id

    def _expire_silences(self, t: float) -> None:
        for key in [k for k, s in self.silences.items() if s.end_s <= t]:
            del self.silences[key]

    # ----- reading ----------------------------------------------------------------------
    def wall_time(self) -> float:
        """The monitor's wall clock (unix s), as its stored timestamps use."""
        return self._clock.time()

    def history(self, series: str, deployment: str, version: str, start_s: float,
                end_s: float, step_s: float) -> list[tuple[float, float]]:
        """Points of one series of one deployment (``version="*"``: all versions added up)."""
        if end_s < start_s:
            raise InvalidInput("until_s must not be before since_s", field="until_s")
        agg: Aggregation = "max" if series in ("p99_ms", "queue_depth") or series.startswith(
            "anomaly_score:") else "avg"
        return self.store.query(series, {"deployment": deployment, "version": version},
                                start_s, end_s, step_s, agg)

    async def stored_rate(self, deployment: str, version: str, start_s: float, end_s: float,
                          step_s: float) -> list[tuple[float, float]]:
        """Requests/s of one version over a past span (unix s), for an autoscaler that starts
        (after a restart or a redeploy): from Prometheus when configured, since it outlives
        this process, else from this monitor's own store."""
        url = self.config.prometheus_url
        if url is None:
            return self.history("rps", deployment, version, start_s, end_s, step_s)
        reader = PrometheusReader(url, rate_window_s=self.config.prometheus_rate_window_s)
        try:
            return await reader.history("rps", deployment, version, start_s, end_s, step_s)
        finally:
            await reader.aclose()

    def deployment_state(self, name: str) -> tuple[SeasonalForecaster, CapacityWarning | None] \
            | None:
        state = self._deployments.get(name)
        return None if state is None else (state.forecast.forecaster, state.warning)

    def latest_values(self, deployment: str) -> dict[str, float] | None:
        """``deployment``'s series in the latest interval (a percentile or batch size is
        absent when that interval had none); ``None`` before its first tick."""
        state = self._deployments.get(deployment)
        return None if state is None or state.latest is None else dict(state.latest)

    def num_unknown_model_requests(self, start_s: float, end_s: float) -> int | None:
        """Requests that named no deployment in ``[start_s, end_s)`` (unix s); ``None`` when
        this monitor was given no count to read."""
        if self._unknown_models is None:
            return None
        points = self.store.query(UNKNOWN_MODEL_SERIES, None, start_s, end_s,
                                  max(end_s - start_s, 1.0), "sum")
        return round(sum(v for _, v in points))

    def slo_statuses(self, deployment: str) -> list[tuple[SloConfig, SloStatus | None]]:
        return [(t.config, t.status) for t in self._slos if t.slo.deployment == deployment]
