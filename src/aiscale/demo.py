"""``aiscale demo``: serve the bundled minilm model and drive a short ramp of simulated users.

``run_demo`` registers ``minilm`` in a data dir (a temporary one by default), serves it on
127.0.0.1 on a free port in a background thread, measures the cold start (launch to the first
embedding answered), then runs closed-loop users at ``/v1/embeddings`` in stages of
1 → 4 → 16 → ``max_users`` (``stage_users``), each stage one ``aiscale.bench.run_bench`` call
with its built-in lean HTTP client, while ``/metrics`` is scraped once a second. The view
(``demo_view.py``) shows it live on a terminal and as plain lines elsewhere. At the end the
server is stopped in uvicorn's order (stop accepting, drain, stop replicas) and a
``DemoSummary`` is returned and printed.

The demo opens with the live dashboard: its URL (``/dashboard``, with a temporary admin key in
``?key=`` when the data dir's registry holds keys) is printed in a panel before the load starts
and, when asked (``open_browser``, the CLI's default) and a graphical browser can be shown, it
is opened with ``webbrowser``. Where there is none (no display, a test, a server over SSH)
nothing is launched: a console browser must never take over the terminal the view draws on.

Ctrl-C stops the load and the server cleanly and returns the stages finished so far, with
``is_interrupted`` set; the caller (``cli.py``) chooses the exit status. This module never
exits the process and never leaves a replica behind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import webbrowser
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from rich.console import Console

from aiscale.bench import BenchConfig, ProgressSnapshot, run_bench
from aiscale.config import load_config, parse_config
from aiscale.demo_scrape import GatewayMonitor, mean_batch_size
from aiscale.demo_view import (
    DemoFrame,
    DemoSummary,
    DemoView,
    StageResult,
    open_view,
    render_summary,
)
from aiscale.errors import AiscaleError, InvalidInput
from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.serving.app import GatewayApp
from aiscale.serving.launch import build_gateway, ensure_registered
from aiscale.serving.server import bind_socket, make_uvicorn, url_of, wait_ready

__all__ = ["DemoFrame", "DemoSummary", "ServedGateway", "StageResult", "dashboard_url",
           "has_graphical_browser", "open_dashboard", "run_demo", "say", "show_dashboard",
           "stage_users"]

logger = logging.getLogger(__name__)

_MODEL = "minilm"
_PROGRESS_INTERVAL_S = 0.5
_SCRAPE_INTERVAL_S = 1.0
_READY_TIMEOUT_S = 180.0
_STOP_TIMEOUT_S = 90.0
_SCRAPE_TIMEOUT = httpx.Timeout(2.0)


def stage_users(max_users: int) -> tuple[int, ...]:
    """The ramp: 1, 4, 16 (those below ``max_users``), then ``max_users``.

    >>> stage_users(64), stage_users(8), stage_users(1)
    ((1, 4, 16, 64), (1, 4, 8), (1,))
    """
    if max_users < 1:
        raise InvalidInput(f"users must be >= 1, got {max_users}", field="users")
    return (*(n for n in (1, 4, 16) if n < max_users), max_users)


def run_demo(
    *,
    data_dir: Path | None = None,
    duration_s: float = 40.0,
    max_users: int = 64,
    console: Console | None = None,
    replicas: int = 1,
    open_browser: bool = False,
) -> DemoSummary:
    """Serve minilm, ramp simulated users for ``duration_s`` seconds, stop, print a summary.

    ``data_dir`` holds the registry and artifacts; ``None`` uses a temporary folder removed at
    the end. ``duration_s`` is shared equally by the stages. ``open_browser``: also open the
    dashboard in a graphical browser when one can be shown (``open_dashboard``). Raises
    ``InvalidInput`` for bad arguments and ``AiscaleError`` when the server cannot start;
    Ctrl-C returns the stages finished so far with ``is_interrupted=True``.
    """
    users = stage_users(max_users)
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise InvalidInput(f"duration must be > 0 s, got {duration_s}", field="duration")
    if replicas < 1:
        raise InvalidInput(f"replicas must be >= 1, got {replicas}", field="replicas")
    console = console or Console()
    is_temporary = data_dir is None
    folder = Path(tempfile.mkdtemp(prefix="aiscale-demo-")) if data_dir is None else data_dir
    folder = folder.expanduser().resolve()
    try:
        return _run_in(folder, users, duration_s, replicas, console, is_temporary,
                       open_browser)
    finally:
        if is_temporary:
            shutil.rmtree(folder, ignore_errors=True)


def _run_in(
    folder: Path,
    users: tuple[int, ...],
    duration_s: float,
    replicas: int,
    console: Console,
    is_temporary: bool,
    open_browser: bool,
) -> DemoSummary:
    folder.mkdir(parents=True, exist_ok=True)
    config = load_config(
        server_overrides={
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": str(folder),
            "registry_url": f"sqlite:///{folder / 'registry.db'}",
        }
    )
    registry = SqlRegistry.open(config.server.resolved_registry_url)
    served: ServedGateway | None = None
    temporary_key_id: str | None = None
    stages: list[StageResult] = []
    cold_start_s: float | None = None
    is_interrupted = False
    try:
        say(console, f"data dir: {folder}")
        artifacts = FsspecArtifactStore(folder / "artifacts", cache_dir=folder / "cache")
        choice = ensure_registered(registry, artifacts, _MODEL)
        headers: tuple[tuple[str, str], ...] = ()
        dashboard_key: str | None = None
        if registry.active_keys():
            # The gateway would refuse anonymous calls: use a key that lives for the demo only
            # (admin too, for the dashboard's data); it is revoked when the demo ends.
            plaintext, key = registry.create_key(
                "aiscale demo (temporary)", frozenset({"inference", "admin"})
            )
            temporary_key_id = key.key_id
            headers = (("authorization", f"Bearer {plaintext}"),)
            dashboard_key = plaintext
        deployment = parse_config(
            {"deployments": [{"name": _MODEL, "model": choice.model,
                              "version": choice.version, "replicas": replicas}]}
        ).deployments[0]
        gateway = build_gateway(config, registry, artifacts, [deployment])
        say(console, f"starting {replicas} replica(s) of {_MODEL} ...")
        launched = time.monotonic()
        served = ServedGateway.start(GatewayApp(gateway))
        try:
            wait_ready(served.url, _READY_TIMEOUT_S, is_alive=served.thread.is_alive)
        except (TimeoutError, RuntimeError) as exc:
            raise AiscaleError(f"the demo server did not start: {exc}") from None
        _first_embedding(served.url, headers)
        cold_start_s = time.monotonic() - launched
        say(console, f"serving on {served.url}; first embedding after {cold_start_s:.1f} s")
        show_dashboard(console, dashboard_url(served.url, dashboard_key), open_browser)
        say(console, "press Ctrl-C to stop early")
        asyncio.run(_drive(served.url, users, duration_s, headers, console, stages))
    except KeyboardInterrupt:
        is_interrupted = True
    finally:
        try:
            if served is not None:
                say(console, "stopping: draining requests and stopping replicas ...")
                served.stop()
            if temporary_key_id is not None:
                registry.revoke_key(temporary_key_id)
        finally:
            registry.close()
    summary = DemoSummary(
        url=served.url if served is not None else "",
        cold_start_s=cold_start_s,
        stages=tuple(stages),
        num_requests=sum(s.num_requests for s in stages),
        num_errors=sum(s.num_errors for s in stages),
        data_dir=folder,
        is_interrupted=is_interrupted,
    )
    for part in render_summary(summary, is_data_dir_temporary=is_temporary):
        console.print(part, markup=False, highlight=False, soft_wrap=True)
    return summary


def dashboard_url(url: str, admin_key: str | None = None) -> str:
    """The dashboard page of the server at ``url``; with ``admin_key`` in ``?key=`` (the page
    keeps it in the browser's storage and drops it from the address bar)."""
    page = f"{url.rstrip('/')}/dashboard"
    return page if admin_key is None else f"{page}?key={admin_key}"


def has_graphical_browser(environ: Mapping[str, str], platform: str) -> bool:
    """Whether ``webbrowser`` would show a window rather than a console browser: macOS and
    Windows always, Linux and the BSDs only with a display (X11 or Wayland)."""
    if platform == "darwin" or platform.startswith("win"):
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def open_dashboard(url: str, *, environ: Mapping[str, str] | None = None,
                   platform: str | None = None) -> bool:
    """Open ``url`` in a graphical browser if one can be shown; ``True`` when one was asked
    to. Never raises: no browser, or one that fails to start, is only logged."""
    if not has_graphical_browser(os.environ if environ is None else environ,
                                 sys.platform if platform is None else platform):
        return False
    try:
        return webbrowser.open(url, new=2)
    except (webbrowser.Error, OSError) as exc:
        logger.info("could not open a browser at %s: %s", url, exc)
        return False


def show_dashboard(console: Console, url: str, open_browser: bool) -> None:
    """Print the dashboard's URL on a ruled-off line of its own (opened in a graphical
    browser when asked and one can be shown); ``demo_llm`` shows it the same way."""
    is_opened = open_browser and open_dashboard(url)
    note = ("opened in your browser; " if is_opened else "open it in a browser; ") + \
        "it updates live while the demo runs"
    # Ruled off from the rest, on a line of its own that is never wrapped (soft_wrap), so
    # the URL can be clicked or copied whole on any terminal width.
    console.rule("live dashboard", style="bold")
    console.print(f"dashboard: {url}", markup=False, highlight=False, soft_wrap=True,
                  style="bold")
    say(console, note)
    console.rule(style="bold")


def say(console: Console, text: str) -> None:
    """One line on ``console``, printed as is (no markup, no highlighting, never wrapped)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _first_embedding(url: str, headers: tuple[tuple[str, str], ...]) -> None:
    """Send one embedding request; raise ``AiscaleError`` unless it is answered with 200."""
    body = {"model": _MODEL, "input": "aiscale cold start"}
    try:
        response = httpx.post(f"{url}/v1/embeddings", json=body, headers=dict(headers), timeout=60)
    except httpx.HTTPError as exc:
        raise AiscaleError(f"the first embedding request failed: {exc}") from None
    if response.status_code != 200:
        raise AiscaleError(
            f"the first embedding request got {response.status_code}: {response.text[:200]}"
        )


@dataclass
class ServedGateway:
    """uvicorn serving the gateway in a daemon thread; we hold the server from the first
    instant, so that Ctrl-C while replicas load can still stop it (unlike ``start_in_thread``,
    which returns only once the server is ready)."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @classmethod
    def start(cls, app: GatewayApp) -> ServedGateway:
        sock = bind_socket("127.0.0.1", 0)
        server = make_uvicorn(app, graceful_timeout_s=app.gateway.settings.drain_timeout_s)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="aiscale-demo-server", daemon=True
        )
        thread.start()
        return cls(url_of(sock), server, thread)

    def stop(self) -> None:
        """Ask uvicorn to exit (it drains, then the lifespan stops the replicas) and wait.

        A second Ctrl-C while stopping does not abandon the replicas: we keep waiting, up to
        ``_STOP_TIMEOUT_S``, for the shutdown to finish.
        """
        self.server.should_exit = True
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while self.thread.is_alive() and time.monotonic() < deadline:
            try:
                self.thread.join(0.2)
            except KeyboardInterrupt:
                continue
        if self.thread.is_alive():
            logger.warning("the demo server did not stop within %.0f s", _STOP_TIMEOUT_S)


@dataclass
class _Progress:
    """Turns ``run_bench`` snapshots into ``DemoFrame``s for the view; owned by the loop."""

    view: DemoView
    monitor: GatewayMonitor
    num_stages: int
    total_s: float
    started: float
    stage_index: int = 0
    num_users: int = 0
    done_requests: int = 0
    done_errors: int = 0
    last_ok: int = 0
    last_at: float = 0.0
    recent_rps: float = 0.0

    def begin_stage(self, index: int, num_users: int) -> None:
        self.stage_index, self.num_users = index, num_users
        self.last_ok, self.last_at = 0, time.perf_counter()

    def end_stage(self, result: StageResult) -> None:
        self.done_requests += result.num_requests
        self.done_errors += result.num_errors

    def __call__(self, snapshot: ProgressSnapshot) -> None:
        now = time.perf_counter()
        if now - self.last_at > 0.05:
            # Throughput over the last interval, not since the stage began: the view shows
            # the ramp as it happens.
            self.recent_rps = (snapshot.ok - self.last_ok) / (now - self.last_at)
            self.last_ok, self.last_at = snapshot.ok, now
        latest = self.monitor.latest
        self.view.progress(
            DemoFrame(
                stage_index=self.stage_index,
                num_stages=self.num_stages,
                num_users=self.num_users,
                elapsed_s=now - self.started,
                total_s=self.total_s,
                throughput_rps=self.recent_rps,
                p50_ms=snapshot.p50_ms,
                p99_ms=snapshot.p99_ms,
                num_requests=self.done_requests + snapshot.requests,
                num_errors=self.done_errors + snapshot.errors,
                mean_batch_size=mean_batch_size(self.monitor.previous, latest),
                queue_depth=None if latest is None else latest.queue_depth,
                num_replicas_ready=None if latest is None else latest.num_replicas_ready,
                num_replicas_wanted=None if latest is None else latest.num_replicas_wanted,
            )
        )


async def _drive(
    url: str,
    users: tuple[int, ...],
    duration_s: float,
    headers: tuple[tuple[str, str], ...],
    console: Console,
    stages: list[StageResult],
) -> None:
    """Run the stages one after another, appending each result to ``stages`` as it ends
    (so that an interrupted demo still reports the finished ones)."""
    stage_s = duration_s / len(users)
    view = open_view(console)
    try:
        async with httpx.AsyncClient(timeout=_SCRAPE_TIMEOUT) as client:
            monitor = GatewayMonitor(client, url, _MODEL)
            progress = _Progress(view, monitor, len(users), duration_s, time.perf_counter())
            async with asyncio.TaskGroup() as group:
                poller = group.create_task(monitor.poll_forever(_SCRAPE_INTERVAL_S))
                for index, num_users in enumerate(users):
                    view.stage_started(index, len(users), num_users, stage_s)
                    before = await monitor.read()
                    progress.begin_stage(index, num_users)
                    bench = await run_bench(
                        BenchConfig(
                            url=f"{url}/v1/embeddings",
                            concurrency=num_users,
                            duration_s=stage_s,
                            model=_MODEL,
                            headers=headers,
                            seed=index,
                            progress_interval_s=_PROGRESS_INTERVAL_S,
                        ),
                        on_progress=progress,
                    )
                    after = await monitor.read()
                    result = StageResult(
                        index=index,
                        num_users=num_users,
                        duration_s=bench.duration_s,
                        num_requests=bench.requests,
                        num_errors=bench.num_errors,
                        throughput_rps=bench.throughput_rps,
                        p50_ms=bench.p50_ms,
                        p99_ms=bench.p99_ms,
                        mean_batch_size=mean_batch_size(before, after),
                    )
                    stages.append(result)
                    progress.end_stage(result)
                    view.stage_finished(result, len(users))
                poller.cancel()
    finally:
        view.close()
