"""Alert rules, deduplication, grouping, silences, actions, audit entries and notifiers."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from aiscale.errors import ConfigError, InvalidInput
from aiscale.monitor.alerts import (
    AlertEngine,
    AlertInputs,
    AlertRule,
    AlertState,
    AlertStep,
    Notification,
    Signal,
    Silence,
    anomaly_signal,
    capacity_signal,
    slo_signals,
)
from aiscale.monitor.audit import AuditEntry
from aiscale.monitor.capacity import CapacityWarning
from aiscale.monitor.notifiers import (
    LogNotifier,
    NotificationFailed,
    WebhookNotifier,
    notification_payload,
)
from aiscale.monitor.slo import Slo, WindowCounts, evaluate

ANOMALY = AlertRule("latency_anomaly", "anomaly_score:latency_p99", ">=", 0.9, for_points=2,
                    severity="ticket", actions=("pause_rollout",))
CAPACITY = AlertRule("capacity", "capacity_saturates_in_s", "<=", 900.0, actions=("scale_up",))
BURN = AlertRule("slo_page", "slo_page", ">=", 1.0, actions=("rollback_canary",))


class _Run:
    """Drives an engine step by step, keeping the state (as the live controller would)."""

    def __init__(self, engine: AlertEngine) -> None:
        self.engine = engine
        self.state: AlertState | None = None
        self.silences: tuple[Silence, ...] = ()

    def step(self, now_s: float, *signals: Signal) -> AlertStep:
        out = self.engine.step(AlertInputs(signals, self.silences), self.state, now_s)
        self.state = out.state
        return out


def _score(v: float, t: float, deployment: str = "chat") -> Signal:
    return anomaly_signal("latency_p99", deployment, v, t)


@pytest.mark.parametrize(
    ("scores", "fires_at"),
    [
        ([0.95, 0.5, 0.95, 0.5], None),  # never two points in a row
        ([0.95, 0.95, 0.5], 1),
        ([0.5, 0.9, 0.91, 0.99], 2),  # >= is inclusive
        ([0.89, 0.89, 0.89], None),
    ],
)
def test_for_points(scores: list[float], fires_at: int | None) -> None:
    """'score >= 0.9 for 2 points' fires on the second consecutive point, not before."""
    run = _Run(AlertEngine([ANOMALY], group_wait_s=0.0))
    fired = [i for i, v in enumerate(scores) if run.step(float(i), _score(v, float(i))).actions]
    assert fired == ([] if fires_at is None else [fires_at])


def test_for_seconds_needs_the_condition_to_last() -> None:
    """A rule with for_s fires once the condition has held that long."""
    rule = AlertRule("slow", "x", ">", 1.0, for_s=60.0)
    run = _Run(AlertEngine([rule], group_wait_s=0.0))
    sent = [bool(run.step(t, Signal("x", "d", 2.0, t)).notifications) for t in (0, 30, 59, 60, 90)]
    assert sent == [False, False, False, True, False]


def test_firing_alert_is_notified_once_until_resolved_or_repeat() -> None:
    """Dedup: one notification when it fires, none while it keeps firing, one resolution,
    and again after the repeat interval."""
    run = _Run(AlertEngine([CAPACITY], group_wait_s=0.0, repeat_interval_s=3600.0))
    soon = CapacityWarning(600.0, 300.0, 50.0, 40.0, "forecast")
    notes: list[Notification] = []
    for t in range(0, 3000, 60):
        notes += run.step(float(t), capacity_signal("chat", soon, float(t))).notifications
    assert len(notes) == 1 and notes[0].alerts[0].status == "firing"
    notes = list(run.step(3600.0, capacity_signal("chat", soon, 3600.0)).notifications)
    assert len(notes) == 1 and notes[0].status == "firing"  # repeat interval passed
    notes = list(run.step(3700.0, capacity_signal("chat", None, 3700.0)).notifications)
    assert [a.status for a in notes[0].alerts] == ["resolved"]
    assert run.state is not None and not run.state.instances  # forgotten once said
    assert not run.step(3800.0, capacity_signal("chat", None, 3800.0)).notifications


def test_actions_once_per_episode_with_their_cause() -> None:
    """Each rule's actions are emitted when it starts firing, once, naming the cause."""
    run = _Run(AlertEngine([CAPACITY, BURN], group_wait_s=0.0))
    soon = CapacityWarning(400.0, 300.0, 50.0, 40.0, "forecast")
    first = run.step(100.0, capacity_signal("chat", soon, 100.0))
    assert [(a.action, a.deployment, a.rule) for a in first.actions] == [
        ("scale_up", "chat", "capacity")]
    assert "capacity_saturates_in_s=300 <= 900" in first.actions[0].cause
    assert not run.step(160.0, capacity_signal("chat", soon, 160.0)).actions
    run.step(220.0, capacity_signal("chat", None, 220.0))
    again = run.step(280.0, capacity_signal("chat", soon, 280.0))
    assert [a.action for a in again.actions] == ["scale_up"]  # a new episode


def test_alerts_of_one_deployment_are_grouped_within_group_wait() -> None:
    """Alerts of one deployment firing within group_wait_s go out as one notification at the
    end of the wait; another deployment gets its own."""
    run = _Run(AlertEngine([CAPACITY, BURN], group_wait_s=30.0))
    soon = CapacityWarning(400.0, 300.0, 50.0, 40.0, "forecast")
    assert not run.step(0.0, capacity_signal("chat", soon, 0.0)).notifications
    burning = Signal("slo_page", "chat", 1.0, 10.0)
    other = Signal("slo_page", "search", 1.0, 10.0)
    assert not run.step(10.0, burning, other).notifications
    sent = run.step(30.0).notifications
    assert [(n.group, sorted(a.rule for a in n.alerts)) for n in sent] == [
        ("chat", ["capacity", "slo_page"])]
    sent = run.step(40.0).notifications
    assert [(n.group, [a.rule for a in n.alerts]) for n in sent] == [("search", ["slo_page"])]


def test_silence_mutes_notifications_and_actions_until_it_ends() -> None:
    """A matching silence mutes the alert (no notification, no action); when it ends while
    the alert still fires, the notification goes out; other deployments are unaffected."""
    run = _Run(AlertEngine([BURN], group_wait_s=0.0))
    run.silences = (Silence((("deployment", "chat"), ("alertname", "slo_page")), 0.0, 100.0,
                            "planned migration"),)
    out = run.step(10.0, Signal("slo_page", "chat", 1.0, 10.0),
                   Signal("slo_page", "search", 1.0, 10.0))
    assert [n.group for n in out.notifications] == ["search"]
    assert [a.deployment for a in out.actions] == ["search"]
    assert not run.step(50.0, Signal("slo_page", "chat", 1.0, 50.0)).notifications
    out = run.step(100.0, Signal("slo_page", "chat", 1.0, 100.0))
    assert [n.group for n in out.notifications] == ["chat"]
    assert not out.actions  # the episode's actions were muted, not deferred


def test_alert_resolved_under_silence_is_never_notified() -> None:
    """An alert that fired and resolved inside a silence leaves nothing to say."""
    run = _Run(AlertEngine([BURN], group_wait_s=0.0))
    run.silences = (Silence((("severity", "page"),), 0.0, 100.0),)
    steps = [run.step(10.0, Signal("slo_page", "chat", 1.0, 10.0)),
             run.step(20.0, Signal("slo_page", "chat", 0.0, 20.0)),
             run.step(200.0)]
    assert not any(s.notifications or s.actions for s in steps)


def test_slo_status_drives_a_page_rule() -> None:
    """slo_signals turn a paging SloStatus into slo_page = 1 (and 0 when it clears)."""
    slo = Slo("chat", "availability", 0.999)
    bad = evaluate(slo, {w: WindowCounts(1000.0, 900.0) for w in slo.windows_s}, 60.0)
    good = evaluate(slo, {w: WindowCounts(1000.0, 1000.0) for w in slo.windows_s}, 120.0)
    run = _Run(AlertEngine([BURN], group_wait_s=0.0))
    fired = run.step(60.0, *slo_signals(bad))
    assert [a.action for a in fired.actions] == ["rollback_canary"]
    cleared = run.step(120.0, *slo_signals(good))
    assert [a.status for n in cleared.notifications for a in n.alerts] == ["resolved"]


def test_rules_and_silences_refuse_bad_declarations() -> None:
    """Unknown operators or actions, duplicate names and empty silences are refused."""
    with pytest.raises(ConfigError):
        AlertRule("x", "s", "==", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as exc:
        AlertRule("x", "s", ">", 1.0, actions=("reboot",))  # type: ignore[arg-type]
    assert exc.value.field == "actions"
    with pytest.raises(ConfigError):
        AlertEngine([ANOMALY, ANOMALY])
    with pytest.raises(InvalidInput):
        Silence((), 0.0, 1.0)
    with pytest.raises(InvalidInput):
        Silence((("deployment", "chat"),), 5.0, 5.0)


def test_audit_entry_round_trips_as_one_json_line() -> None:
    """An action's audit entry is one compact JSON line that reads back equal."""
    run = _Run(AlertEngine([CAPACITY], group_wait_s=0.0))
    decision = run.step(5.0, capacity_signal("chat", CapacityWarning(
        65.0, 60.0, 9.0, 8.0, "trend"), 5.0)).actions[0]
    entry = AuditEntry.for_decision(decision, "2026-11-29T02:00:00Z", outcome="done",
                                    detail="replicas 2 -> 3")
    line = entry.to_json()
    assert "\n" not in line and json.loads(line)["action"] == "scale_up"
    assert AuditEntry.from_json(line) == entry
    with pytest.raises(InvalidInput):
        AuditEntry.from_json('{"action": "scale_up"}')


class _Receiver(BaseHTTPRequestHandler):
    status = 200
    bodies: list[dict[str, object]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    """A real HTTP server on 127.0.0.1, port 0; listening as soon as it is constructed."""
    handler = type("Receiver", (_Receiver,), {"bodies": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _notification() -> Notification:
    run = _Run(AlertEngine([CAPACITY], group_wait_s=0.0))
    return run.step(1.0, capacity_signal("chat", CapacityWarning(
        61.0, 60.0, 9.0, 8.0, "forecast"), 1.0)).notifications[0]


def test_webhook_notifier_posts_json(receiver: tuple[str, type[_Receiver]]) -> None:
    """The webhook receives the notification's payload; a non-2xx answer raises."""
    url, handler = receiver
    note = _notification()

    async def scenario() -> None:
        async with WebhookNotifier(url, timeout=httpx.Timeout(5.0)) as notifier:
            await notifier.send(note)
            handler.status = 500
            with pytest.raises(NotificationFailed) as exc:
                await notifier.send(note)
            assert "500" in exc.value.message

    asyncio.run(scenario())
    assert handler.bodies[0] == notification_payload(note)
    assert handler.bodies[0]["status"] == "firing"


def test_webhook_notifier_reports_an_unreachable_receiver() -> None:
    """A refused connection becomes NotificationFailed, within the timeout."""
    import socket

    with socket.socket() as s:  # a bound, non-listening socket: connections are refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/hook"

        async def scenario() -> None:
            async with WebhookNotifier(url, timeout=httpx.Timeout(2.0)) as notifier:
                await notifier.send(_notification())

        with pytest.raises(NotificationFailed):
            asyncio.run(scenario())


def test_log_notifier_logs_firing_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    """The log notifier writes one WARNING line naming the deployment and the alert."""
    with caplog.at_level(logging.INFO, logger="aiscale.monitor.notifiers"):
        asyncio.run(LogNotifier().send(_notification()))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "chat" in caplog.records[0].getMessage()
    assert "capacity=firing" in caplog.records[0].getMessage()


def test_payload_writes_infinite_values_as_strings() -> None:
    """JSON has no infinity: a resolved capacity alert's +inf is written as 'inf'."""
    run = _Run(AlertEngine([CAPACITY], group_wait_s=0.0))
    run.step(1.0, capacity_signal("chat", CapacityWarning(61.0, 60.0, 9.0, 8.0, "trend"), 1.0))
    note = run.step(2.0, capacity_signal("chat", None, 2.0)).notifications[0]
    payload = notification_payload(note)
    assert payload["alerts"][0]["value"] == "inf"
    assert math.isinf(note.alerts[0].value)
    json.dumps(payload, allow_nan=False)


FORBIDDEN = ("starlette", "sqlalchemy", "redis", "ray", "uvicorn")


def test_monitor_policies_import_no_io_libraries() -> None:
    """A fresh interpreter importing history, scrape, slo, forecast, capacity, alerts and
    audit loads none of the web, database or cluster libraries (nor httpx)."""
    code = (
        "import sys\n"
        "import aiscale.monitor.history, aiscale.monitor.scrape, aiscale.monitor.slo\n"
        "import aiscale.monitor.forecast, aiscale.monitor.capacity, aiscale.monitor.alerts\n"
        "import aiscale.monitor.audit\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN + ('httpx',)!r})\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == ""
