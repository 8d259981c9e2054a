"""The rolling-window data-quality check of served traffic, in the running gateway.

What it does: for each deployment with a ``quality:`` section, :class:`QualityWindows` keeps
the examples of its recent successful requests in a bounded deque (the newest
``max_examples``), and its loop (:meth:`QualityWindows.run`, a task the gateway owns) checks
them every ``interval_s`` against the deployment's expectations: rows older than
``window_s`` are dropped, ``check_quality`` runs in a worker thread, and the outcome becomes
the last report (``GET /admin/deployments/{name}/quality``), the metrics
``aiscale_data_quality_checks_failed`` and ``aiscale_data_quality_checks_total``, the
monitor's ``data_quality_failed`` signal, and one log line when pass turns to fail or back.

Rows have the shape of :mod:`aiscale.data.examples` (one per item of a request), and are
normalised as the capture log stores them (orjson, numpy included) before the check, so the
columns are those ``aiscale data check`` sees for the same traffic.

What it must never do: more on the request path than appending the request's rows; block
the event loop with a check; grow without bound (the deque is bounded, and a removed
deployment's window is dropped).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from aiscale.contracts.clock import Clock, SystemClock
from aiscale.data.export import quality_columns
from aiscale.data.quality import Expectations, QualityReport, check_quality

__all__ = ["QualitySettings", "QualityStatus", "QualityWindows"]

logger = logging.getLogger(__name__)

#: Longest the loop sleeps, so that a deployment deployed later is checked on time.
MAX_IDLE_S = 1.0


@dataclass(frozen=True, slots=True)
class QualitySettings:
    """A deployment's ``quality:`` section as the gateway runs it (see ``QualityConfig``)."""

    expectations: Expectations
    window_s: float = 300.0
    interval_s: float = 30.0
    max_examples: int = 5000


@dataclass(frozen=True, slots=True)
class QualityStatus:
    """The last check of one deployment's window. ``report`` is ``None`` before the first
    check and while the window is empty; ``checked_at_s`` is wall-clock unix seconds."""

    deployment: str
    settings: QualitySettings
    report: QualityReport | None
    num_examples: int
    checked_at_s: float | None

    @property
    def num_failed(self) -> int:
        return 0 if self.report is None else len(self.report.failed)

    def to_dict(self) -> dict[str, Any]:
        """``QualityReport.to_dict`` (``is_passed`` null with no data) and the window."""
        report = (
            self.report.to_dict()
            if self.report is not None
            else {"is_passed": None, "num_rows": 0, "failed": [], "checks": []}
        )
        return {
            "deployment": self.deployment,
            "window_s": self.settings.window_s,
            "interval_s": self.settings.interval_s,
            "num_examples": self.num_examples,
            "checked_at_s": self.checked_at_s,
            **report,
        }


class _Window:
    """One deployment's recent rows, oldest first, each with its monotonic arrival time."""

    __slots__ = ("settings", "rows", "status", "next_check_s")

    def __init__(self, deployment: str, settings: QualitySettings, now_s: float) -> None:
        self.settings = settings
        self.rows: deque[tuple[float, dict[str, Any]]] = deque(maxlen=settings.max_examples)
        self.status = QualityStatus(deployment, settings, None, 0, None)
        self.next_check_s = now_s + settings.interval_s


class QualityWindows:
    """Every deployment's window; created by the gateway with its metrics registry. Ages and
    check times are read on ``clock`` (monotonic), ``checked_at_s`` on its wall time."""

    def __init__(self, registry: CollectorRegistry, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._windows: dict[str, _Window] = {}
        self._failed = Gauge(
            "aiscale_data_quality_checks_failed",
            "Failed data-quality checks in the last check of the deployment's window.",
            ("deployment",),
            registry=registry,
        )
        self._checks = Counter(
            "aiscale_data_quality_checks_total",
            "Data-quality checks of a deployment's window, by result (pass, fail, no_data).",
            ("deployment", "result"),
            registry=registry,
        )
        self._examples = Gauge(
            "aiscale_data_quality_window_examples",
            "Examples in the deployment's data-quality window at its last check.",
            ("deployment",),
            registry=registry,
        )

    # ----- the request path -------------------------------------------------------------
    def observe(
        self,
        deployment: str,
        settings: QualitySettings,
        *,
        request_id: str,
        version: str,
        inputs: Any,
        outputs: Any,
        latency_s: float,
    ) -> None:
        """Append one successful request's rows (called by the app before it answers)."""
        now_s = self._clock.monotonic()
        window = self._windows.get(deployment)
        if window is None or (window.settings is not settings and window.settings != settings):
            # A new deployment, or one redeployed with other settings: a fresh window.
            window = self._windows[deployment] = _Window(deployment, settings, now_s)
        if isinstance(inputs, list) and isinstance(outputs, list) and len(inputs) == len(outputs):
            pairs: Any = zip(inputs, outputs, strict=True)
        else:
            pairs = ((inputs, outputs),)
        ts_s = self._clock.time()
        latency_ms = latency_s * 1000.0
        window.rows.extend(
            (now_s, {"request_id": request_id, "item": i, "ts": ts_s, "version": version,
                     "latency_ms": latency_ms, "input": item, "output": output,
                     "label": None, "score": None, "comment": None, "num_feedback": 0})
            for i, (item, output) in enumerate(pairs)
        )  # fmt: skip

    # ----- reading ----------------------------------------------------------------------
    def status(self, deployment: str) -> QualityStatus | None:
        """The last check of ``deployment``, or ``None`` when it has no window (yet)."""
        window = self._windows.get(deployment)
        return None if window is None else window.status

    def num_failed(self, deployment: str) -> int | None:
        """Failed checks in the last check; ``None`` without a quality section (the monitor's
        ``data_quality_failed`` signal)."""
        window = self._windows.get(deployment)
        return None if window is None else window.status.num_failed

    # ----- the loop ---------------------------------------------------------------------
    async def run(self, configured: Callable[[], Mapping[str, QualitySettings]]) -> None:
        """Check each due window, forever; ``configured()`` gives the settings of every
        current deployment that has them. Cancelled by the gateway at shutdown."""
        while True:
            now_s = self._clock.monotonic()
            wanted = configured()
            self._sync(wanted, now_s)
            for name, window in list(self._windows.items()):
                if window.next_check_s <= now_s:
                    window.next_check_s = now_s + window.settings.interval_s
                    try:
                        await self.check(name)
                    except Exception:  # a task boundary: one failed check must not end them
                        logger.exception("data-quality check of %s failed", name)
            next_s = min((w.next_check_s for w in self._windows.values()),
                         default=now_s + MAX_IDLE_S)  # fmt: skip
            await self._clock.sleep(min(MAX_IDLE_S, max(0.0, next_s - self._clock.monotonic())))

    def _sync(self, wanted: Mapping[str, QualitySettings], now_s: float) -> None:
        """A window per configured deployment, so that one with no traffic reports no data."""
        for name in [n for n in self._windows if n not in wanted]:
            del self._windows[name]
            for gauge in (self._failed, self._examples):
                try:
                    gauge.remove(name)
                except KeyError:  # never checked: the series was never created
                    pass
        for name, settings in wanted.items():
            window = self._windows.get(name)
            if window is None or window.settings != settings:
                self._windows[name] = _Window(name, settings, now_s)

    async def check(self, deployment: str) -> QualityStatus:
        """Drop rows older than the window and check the rest, in a worker thread."""
        window = self._windows[deployment]
        settings = window.settings
        horizon_s = self._clock.monotonic() - settings.window_s
        rows = window.rows
        while rows and rows[0][0] < horizon_s:
            rows.popleft()
        snapshot = [row for _, row in rows]
        report = None
        if snapshot:
            report = await anyio.to_thread.run_sync(_check_rows, snapshot, settings.expectations)
        before = window.status
        checked_at_s = self._clock.time()
        status = QualityStatus(deployment, settings, report, len(snapshot), checked_at_s)
        if self._windows.get(deployment) is window:  # not removed while the thread ran
            window.status = status
            self._failed.labels(deployment).set(status.num_failed)
            self._examples.labels(deployment).set(len(snapshot))
        result = "no_data" if report is None else "pass" if report.is_passed else "fail"
        self._checks.labels(deployment, result).inc()
        _log_change(before, status)
        return status


def _check_rows(rows: list[dict[str, Any]], expectations: Expectations) -> QualityReport:
    """The rows as the capture log would give them back (JSON), checked (worker thread)."""
    stored = [
        {**row, "input": _as_stored(row["input"]), "output": _as_stored(row["output"])}
        for row in rows
    ]
    return check_quality(quality_columns(stored), expectations)


def _as_stored(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


def _log_change(before: QualityStatus, after: QualityStatus) -> None:
    was_failing, is_failing = before.num_failed > 0, after.num_failed > 0
    if is_failing and not was_failing and after.report is not None:
        logger.warning(
            "data quality of %s fails over the last %g s (%d examples): %s",
            after.deployment,
            after.settings.window_s,
            after.num_examples,
            ", ".join(c.name for c in after.report.failed),
        )
    elif was_failing and not is_failing:
        logger.info("data quality of %s passes again", after.deployment)
