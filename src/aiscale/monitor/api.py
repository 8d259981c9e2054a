"""Admin endpoints under ``/admin/monitor``: snapshot, history, alerts, silences, audit.

Called by ``AdminApi`` (the caller already has the ``admin`` scope), which hands it plain
values (method, path parts, query parameters, a body reader) and turns the JSON payload it
returns into the HTTP answer: this module never imports the serving part. Query parameters and
bodies are checked here; every bad one is an ``InvalidInput`` (400) naming the parameter.
History comes from the embedded store, or from Prometheus (``source=prometheus``, the default
when ``monitor.prometheus_url`` is set).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aiscale.errors import Conflict, InvalidInput, MethodNotAllowed, NotFound
from aiscale.monitor.alerts import Silence
from aiscale.monitor.config import SERIES
from aiscale.monitor.live import LiveMonitor
from aiscale.monitor.prometheus import PrometheusReader
from aiscale.monitor.snapshot import alerts_json, audit_json, build_snapshot

__all__ = ["MonitorApi"]

_MAX_POINTS = 11_000  # Prometheus refuses more than 11,000 points per series as well


class SilenceBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    matchers: dict[str, str]
    start_s: float | None = None
    end_s: float | None = None
    duration_s: float | None = Field(default=None, gt=0)
    comment: str = ""

    @model_validator(mode="after")
    def _check(self) -> SilenceBody:
        if (self.end_s is None) == (self.duration_s is None):
            raise ValueError("give exactly one of end_s and duration_s")
        return self


def _number(params: Mapping[str, str], name: str, default: float | None, *,
            minimum: float | None = None) -> float | None:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a number, not {text!r}", field=name) from None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise InvalidInput(f"{name} must be a finite number >= {minimum}", field=name)
    return value


class MonitorApi:
    """The ``/admin/monitor`` endpoints of one monitor (``None``: the monitor is off, and
    every endpoint answers ``Conflict``). ``rollout_of(deployment)`` gives the snapshot's
    ``rollout`` entry (``None`` when there is no rollout)."""

    def __init__(self, monitor: LiveMonitor | None,
                 rollout_of: Callable[[str], dict[str, Any] | None]) -> None:
        self.monitor = monitor
        self.rollout_of = rollout_of

    def _monitor(self) -> LiveMonitor:
        if self.monitor is None:
            raise Conflict("the monitor is off on this server (monitor.enabled: false)",
                           field="monitor")
        return self.monitor

    async def handle(self, method: str, parts: list[str], params: Mapping[str, str],
                     read_body: Callable[[], Awaitable[bytes]]) -> Any:
        """The JSON payload of ``method`` on ``/admin/monitor/{parts}``; raises the domain
        errors the admin layer maps to status codes."""
        monitor = self._monitor()
        if parts == ["silences"]:
            if method == "POST":
                return self._add_silence(monitor, await read_body())
            if method == "GET":
                return {"silences": _silences(monitor)}
            raise MethodNotAllowed("use GET or POST", field="method")
        if method != "GET":
            raise MethodNotAllowed("use GET", field="method")
        if parts == ["snapshot"]:
            window = _number(params, "window_s", 900.0, minimum=1.0) or 900.0
            step = _number(params, "step_s", None, minimum=0.001)
            if step is not None and window / step > _MAX_POINTS:
                raise InvalidInput(f"window_s / step_s must be <= {_MAX_POINTS}", field="step_s")
            return build_snapshot(monitor, window, self.rollout_of, step_s=step)
        if parts == ["history"]:
            return await self._history(monitor, params)
        if parts == ["alerts"]:
            return {"alerts": alerts_json(monitor), "silences": _silences(monitor)}
        if parts == ["audit"]:
            limit = int(_number(params, "limit", 200.0, minimum=1.0) or 200)
            return {"entries": audit_json(monitor, min(limit, 1000))}
        raise NotFound(f"no monitor endpoint at /admin/monitor/{'/'.join(parts)}", field="path")

    async def _history(self, monitor: LiveMonitor, params: Mapping[str, str]
                       ) -> dict[str, Any]:
        """``since_s``/``until_s``: unix seconds, or negative for seconds before now."""
        deployment = params.get("deployment")
        if not deployment:
            raise InvalidInput("deployment is required", field="deployment")
        series = params.get("series", "rps")
        known = (*SERIES, *(f"anomaly_score:{s}" for s in SERIES))
        if series not in known:
            raise InvalidInput(f"unknown series {series!r}; known: {', '.join(known)}",
                               field="series")
        version = params.get("version") or "*"
        now = monitor.wall_time()
        since = _number(params, "since_s", -900.0)
        until = _number(params, "until_s", 0.0)
        assert since is not None and until is not None
        since = now + since if since <= 0 else since
        until = now + until if until <= 0 else until
        if until < since:
            raise InvalidInput("until_s must not be before since_s", field="until_s")
        step = _number(params, "step_s", max(monitor.config.interval_s, 1.0), minimum=0.001)
        assert step is not None
        if (until - since) / step > _MAX_POINTS:
            raise InvalidInput(f"(until_s - since_s) / step_s must be <= {_MAX_POINTS}",
                               field="step_s")
        url = monitor.config.prometheus_url
        source = params.get("source") or ("prometheus" if url else "local")
        if source not in ("local", "prometheus"):
            raise InvalidInput("source must be local or prometheus", field="source")
        if source == "prometheus":
            if url is None:
                raise InvalidInput("this server has no monitor.prometheus_url", field="source")
            if series.startswith("anomaly_score:"):
                raise InvalidInput("anomaly scores are kept in the local store only",
                                   field="series")
            reader = PrometheusReader(url, rate_window_s=monitor.config.prometheus_rate_window_s)
            try:
                points = await reader.history(series, deployment, version, since, until, step)
            finally:
                await reader.aclose()
        else:
            points = monitor.history(series, deployment, version, since, until + 1e-9, step)
        return {"deployment": deployment, "version": version, "series": series,
                "source": source, "since_s": since, "until_s": until, "step_s": step,
                "points": [[t, v] for t, v in points]}

    def _add_silence(self, monitor: LiveMonitor, body: bytes) -> dict[str, Any]:
        try:
            parsed = SilenceBody.model_validate(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidInput(f"{path}: {first['msg']}", field=path) from None
        bad = [k for k in parsed.matchers if k not in ("alertname", "deployment", "severity",
                                                        "signal")]
        if bad:
            raise InvalidInput(f"unknown matcher keys {bad}; use alertname, deployment, "
                               "severity, signal", field="matchers")
        start = monitor.wall_time() if parsed.start_s is None else parsed.start_s
        end = parsed.end_s if parsed.end_s is not None else start + float(parsed.duration_s or 0)
        silence = Silence(tuple(sorted(parsed.matchers.items())), start, end, parsed.comment)
        silence_id = monitor.add_silence(silence)
        return {"id": silence_id, **_silence_json(silence)}


def _silence_json(silence: Silence) -> dict[str, Any]:
    return {"matchers": dict(silence.matchers), "start_s": silence.start_s,
            "end_s": silence.end_s, "comment": silence.comment}


def _silences(monitor: LiveMonitor) -> list[dict[str, Any]]:
    return [{"id": k, **_silence_json(s)} for k, s in monitor.silences.items()]
