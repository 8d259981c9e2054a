"""``aiscale demo``: the real minilm model served on loopback and driven by a short user ramp."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from aiscale.demo import (
    DemoFrame,
    StageResult,
    dashboard_url,
    has_graphical_browser,
    open_dashboard,
    run_demo,
    stage_users,
)
from aiscale.demo_scrape import GatewayReading, mean_batch_size, parse_reading
from aiscale.demo_view import LiveView, PlainView, open_view, sparkline
from aiscale.errors import InvalidInput
from aiscale.registry import SqlRegistry

ROOT = Path(__file__).parent.parent


def _replica_children() -> list[int]:
    """Pids of replica processes whose parent is this process (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"aiscale.replicas.process" in cmdline:
            found.append(int(entry.name))
    return found


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_ramps_users_reports_stages_and_stops(tmp_path: Path) -> None:
    """Every stage of the ramp gets answers without errors, a lone user's batches hold one
    item and more users make bigger batches; afterwards the server refuses connections, no
    replica is left, and the plain output names the endpoints and the data dir. A data dir
    whose registry holds API keys works too: the demo's own key is revoked at the end."""
    output = io.StringIO()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    registry = SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}")
    try:
        _, owner_key = registry.create_key("owner", frozenset({"admin", "inference"}))
    finally:
        registry.close()
    summary = run_demo(
        data_dir=data_dir, duration_s=6.0, max_users=8, console=Console(file=output, width=200)
    )
    text = output.getvalue()

    assert not summary.is_interrupted
    assert [s.num_users for s in summary.stages] == [1, 4, 8]
    for stage in summary.stages:
        assert stage.num_requests > 0
        assert stage.num_errors == 0
        assert stage.throughput_rps > 0
        assert stage.p50_ms is not None and stage.p99_ms is not None
        assert stage.p50_ms <= stage.p99_ms
        assert stage.mean_batch_size is not None and stage.mean_batch_size >= 1.0
    first, last = summary.stages[0], summary.stages[-1]
    assert first.mean_batch_size == 1.0
    assert last.mean_batch_size is not None and last.mean_batch_size > first.mean_batch_size
    assert summary.num_requests == sum(s.num_requests for s in summary.stages)
    assert summary.num_errors == 0
    assert summary.cold_start_s is not None and summary.cold_start_s > 0

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{summary.url}/v2/health/live", timeout=5)
    assert _replica_children() == []

    # The demo opens with the dashboard: its URL carries the demo's temporary admin key
    # (this registry holds keys), revoked at the end like the rest of that key.
    shown = re.search(r"^dashboard: (http://\S+/dashboard\?key=\S+)$", text, re.MULTILINE)
    assert shown is not None and shown.group(1).startswith(f"{summary.url}/dashboard?key=")
    assert text.index("dashboard: ") < text.index("stage 1/")
    # The closing report names no URL of the server it has just stopped: it says that one
    # stopped and points at the one `aiscale serve` starts.
    closing = text[text.index("stopping:"):]
    assert f"The demo server ({summary.url}) has stopped" in closing
    assert f"{summary.url}/" not in closing
    assert "at http://127.0.0.1:8000: dashboard /dashboard, metrics /metrics" in closing
    assert "curl -s http://127.0.0.1:8000/v1/embeddings" in closing
    assert "stage 3/3 done: 8 users" in text
    assert f"data dir: {data_dir}" in text and "(temporary" not in text
    registry = SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}")
    try:
        assert [k.key_id for k in registry.active_keys()] == [owner_key.key_id]
        assert len(registry.list_keys()) == 2
    finally:
        registry.close()


def test_ctrl_c_stops_the_load_and_the_server_without_traceback() -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during the load
    stops the demo with exit status 0 and no traceback, stops every replica, refuses
    connections afterwards, and removes the temporary data dir."""
    code = "from aiscale.demo import run_demo; run_demo(duration_s=120.0, max_users=4)"
    process = subprocess.Popen(
        [sys.executable, "-u", "-c", code],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        url, dashboard, pids = "", "", []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            found = re.search(r"serving on (http://\S+);", line)
            if found:
                url = found.group(1)
                info = httpx.get(f"{url}/admin/deployments", timeout=10).json()
                pids = info["deployments"][0]["replicas"]["pids"]
            shown = re.match(r"dashboard: (http://\S+)$", line.strip())
            if shown:
                dashboard = shown.group(1)
            if line.startswith("stage 1/"):
                break
        assert url and pids, "the demo did not start its load"
        # The dashboard the demo opened with is live while the load runs.
        assert dashboard == f"{url}/dashboard"
        page = httpx.get(dashboard, timeout=10)
        assert page.status_code == 200 and "dashboard.js" in page.text
        snapshot = httpx.get(f"{url}/admin/monitor/snapshot", timeout=10).json()
        assert [d["name"] for d in snapshot["deployments"]] == ["minilm"]
        os.killpg(process.pid, signal.SIGINT)
        rest, errors = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)

    assert process.returncode == 0, errors
    assert "Traceback" not in errors
    assert "interrupted: the load and the server were stopped" in rest
    assert not any(_is_alive(pid) for pid in pids)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/health/live", timeout=5)
    kept = re.search(r"data dir: (\S+) \(temporary, removed\)", rest)
    assert kept is not None and not Path(kept.group(1)).exists()


@pytest.mark.parametrize(
    ("max_users", "expected"),
    [(1, (1,)), (2, (1, 2)), (4, (1, 4)), (8, (1, 4, 8)), (16, (1, 4, 16)),
     (64, (1, 4, 16, 64)), (100, (1, 4, 16, 100))],
)
def test_stage_users_ramp_from_one_to_max(max_users: int, expected: tuple[int, ...]) -> None:
    """The ramp is 1, 4, 16 (those below the maximum), then the maximum, strictly rising."""
    assert stage_users(max_users) == expected


def test_bad_arguments_are_rejected_before_anything_starts(tmp_path: Path) -> None:
    """Zero users, a non-positive duration or zero replicas raise InvalidInput naming the
    option, and nothing is written to the data dir."""
    console = Console(file=io.StringIO())
    data_dir = tmp_path / "data"
    with pytest.raises(InvalidInput) as caught:
        run_demo(data_dir=data_dir, max_users=0, console=console)
    assert caught.value.field == "users"
    with pytest.raises(InvalidInput) as caught:
        run_demo(data_dir=data_dir, duration_s=0.0, console=console)
    assert caught.value.field == "duration"
    with pytest.raises(InvalidInput) as caught:
        run_demo(data_dir=data_dir, replicas=0, console=console)
    assert caught.value.field == "replicas"
    assert not (tmp_path / "data").exists()


METRICS = """\
# HELP aiscale_batcher_batch_size Items per batch sent to a replica.
aiscale_batcher_batch_size_bucket{deployment="minilm",version="1",le="1.0"} 3.0
aiscale_batcher_batch_size_count{deployment="minilm",version="1"} 10.0
aiscale_batcher_batch_size_sum{deployment="minilm",version="1"} 25.0
aiscale_batcher_batch_size_count{deployment="other",version="1"} 99.0
aiscale_batcher_queue_depth{deployment="minilm",version="1"} 3.0
aiscale_replicas{deployment="minilm",version="1",state="ready"} 2.0
aiscale_replicas{deployment="minilm",version="1",state="starting"} 1.0
aiscale_replicas{deployment="minilm",version="1",state="wanted"} 3.0
aiscale_gateway_requests_total{deployment="minilm",version="1",status="200"} 40.0
"""


def test_metrics_reading_sums_one_deployment_and_mean_batch_uses_deltas() -> None:
    """A reading sums only the named deployment's samples; the mean batch size between two
    readings is items over batches sent in between, None when no batch was sent."""
    reading = parse_reading(METRICS, "minilm")
    assert reading == GatewayReading(
        num_batch_items=25.0, num_batches=10.0, queue_depth=3.0,
        num_replicas_ready=2.0, num_replicas_wanted=3.0,
    )
    later = GatewayReading(45.0, 14.0, 0.0, 2.0, 2.0)
    assert mean_batch_size(reading, later) == 5.0
    assert mean_batch_size(reading, reading) is None
    assert mean_batch_size(None, later) is None
    assert parse_reading("", "minilm") == GatewayReading(0.0, 0.0, 0.0, 0.0, 0.0)


def _frame(elapsed_s: float, rps: float) -> DemoFrame:
    return DemoFrame(
        stage_index=1, num_stages=4, num_users=4, elapsed_s=elapsed_s, total_s=40.0,
        throughput_rps=rps, p50_ms=12.5, p99_ms=40.0, num_requests=120, num_errors=0,
        mean_batch_size=3.5, queue_depth=2.0, num_replicas_ready=1.0, num_replicas_wanted=1.0,
    )


def test_live_view_on_a_terminal_shows_figures_sparkline_and_finished_stages() -> None:
    """On a terminal the view is a live panel with the stage, throughput, latency, gateway
    gauges, a throughput sparkline and the table of finished stages; elsewhere plain lines."""
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=100, color_system=None)
    view = open_view(console)
    assert isinstance(view, LiveView)
    view.stage_started(1, 4, 4, 10.0)
    for step, rps in enumerate((10.0, 80.0, 160.0)):
        view.progress(_frame(10.5 + step * 0.5, rps))
    view.stage_finished(
        StageResult(index=1, num_users=4, duration_s=10.0, num_requests=1234, num_errors=0,
                    throughput_rps=123.4, p50_ms=12.5, p99_ms=40.0, mean_batch_size=3.5), 4,
    )
    view.close()
    text = output.getvalue()
    assert "stage 2/4: 4 simulated users" in text
    assert "160.0 req/s" in text and "p99 40.0 ms" in text
    assert "mean batch 3.5" in text and "replicas ready 1/1" in text
    assert sparkline([10.0, 80.0, 160.0]) in text
    assert "1,234" in text

    assert isinstance(open_view(Console(file=io.StringIO())), PlainView)


def test_sparkline_scales_to_the_largest_value() -> None:
    """One block per value, the largest the tallest; all-zero history stays flat."""
    assert sparkline([0.0, 50.0, 100.0]) == "▁▅█"
    assert sparkline([0.0, 0.0]) == "▁▁"
    assert sparkline([]) == ""


@pytest.mark.parametrize(("environ", "platform", "expected"), [
    ({}, "linux", False),
    ({"DISPLAY": ":0"}, "linux", True),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
    ({"DISPLAY": ""}, "freebsd14", False),
    ({}, "darwin", True),
    ({}, "win32", True),
])
def test_a_browser_is_opened_only_where_a_window_can_be_shown(
    environ: dict[str, str], platform: str, expected: bool
) -> None:
    """Without a display (a test, a server over SSH) no browser is started: a console
    browser would take over the terminal the live view draws on."""
    assert has_graphical_browser(environ, platform) is expected


def test_without_a_display_opening_the_dashboard_is_a_harmless_no() -> None:
    """``open_dashboard`` with no display returns False and starts nothing; the URL of a
    server with keys carries the admin key for the page to keep."""
    assert open_dashboard("http://127.0.0.1:1/dashboard", environ={}, platform="linux") is False
    assert dashboard_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000/dashboard"
    assert dashboard_url("http://h:1", "k1") == "http://h:1/dashboard?key=k1"
