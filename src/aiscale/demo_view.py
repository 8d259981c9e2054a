"""How ``aiscale demo`` shows itself: a live rich view on a terminal, plain lines elsewhere.

``open_view(console, ...)`` picks ``LiveView`` (a ``rich.live.Live`` redrawn from the demo's
event loop about twice a second, no refresh thread) when the console is a terminal, and
``PlainView`` (a progress line every few seconds, for CI logs and tests) when it is not.
``render_summary`` formats the final ``DemoSummary``. The values the demo hands its view
(``StageResult``, ``DemoSummary``, ``DemoFrame``) are defined here, so the view needs nothing
of ``demo.py``. This module only formats and writes to the console it is given; it never
sends requests and never decides what a number means.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["DemoFrame", "DemoSummary", "DemoView", "LiveView", "PlainView", "StageResult",
           "open_view", "render_summary", "sparkline"]

_BLOCKS = "▁▂▃▄▅▆▇█"
_HISTORY_POINTS = 48
_PLAIN_EVERY_S = 2.0
_PANEL_WIDTH = 88


@dataclass(frozen=True, slots=True)
class StageResult:
    """One stage of the ramp: ``num_users`` closed-loop users for ``duration_s`` seconds.

    Latencies (ms) cover successful requests; ``mean_batch_size`` is items per batch the
    gateway sent to replicas during the stage (``None`` when ``/metrics`` could not be read).
    """

    index: int
    num_users: int
    duration_s: float
    num_requests: int
    num_errors: int
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    mean_batch_size: float | None


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What the demo measured.

    ``cold_start_s``: seconds from the server's launch to the first embedding answered
    (``None`` when interrupted before). ``stages`` holds the stages that ran to their end.
    """

    url: str
    cold_start_s: float | None
    stages: tuple[StageResult, ...]
    num_requests: int
    num_errors: int
    data_dir: Path
    is_interrupted: bool = False


@dataclass(frozen=True, slots=True)
class DemoFrame:
    """One redraw of the live view: recent throughput/latency and the gateway's gauges."""

    stage_index: int
    num_stages: int
    num_users: int
    elapsed_s: float
    total_s: float
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    num_requests: int
    num_errors: int
    mean_batch_size: float | None
    queue_depth: float | None
    num_replicas_ready: float | None
    num_replicas_wanted: float | None


class DemoView(Protocol):
    """What the demo tells its view; every call is quick and made from the demo's loop."""

    def stage_started(self, index: int, num_stages: int, num_users: int, duration_s: float) -> None:
        ...

    def progress(self, frame: DemoFrame) -> None:
        ...

    def stage_finished(self, result: StageResult, num_stages: int) -> None:
        ...

    def close(self) -> None:
        ...


def open_view(console: Console) -> DemoView:
    """A live view on a terminal, plain progress lines otherwise; call ``close()`` at the end."""
    if console.is_terminal and not console.is_dumb_terminal:
        view = LiveView(console)
        view.start()
        return view
    return PlainView(console)


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled to the largest (all blocks low when all are 0)."""
    top = max(values, default=0.0)
    if top <= 0:
        return _BLOCKS[0] * len(values)
    last = len(_BLOCKS) - 1
    return "".join(_BLOCKS[min(last, max(0, round(v / top * last)))] for v in values)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _replicas(frame: DemoFrame) -> str:
    if frame.num_replicas_ready is None:
        return "-"
    return f"{frame.num_replicas_ready:.0f}/{_num(frame.num_replicas_wanted, 0)}"


def _stage_table(results: list[StageResult], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("stage", "users", "requests", "req/s", "p50", "p99", "mean batch", "errors"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    for result in results:
        table.add_row(
            str(result.index + 1),
            str(result.num_users),
            f"{result.num_requests:,}",
            f"{result.throughput_rps:,.1f}",
            _ms(result.p50_ms),
            _ms(result.p99_ms),
            _num(result.mean_batch_size),
            str(result.num_errors),
        )
    return table


class LiveView:
    """A panel redrawn on each ``progress`` call; the last frame stays on screen."""

    def __init__(self, console: Console) -> None:
        self._live = Live(console=console, auto_refresh=False, transient=False)
        self._history: deque[float] = deque(maxlen=_HISTORY_POINTS)
        self._finished: list[StageResult] = []
        self._frame: DemoFrame | None = None
        self._stage_line = "starting"

    def start(self) -> None:
        self._live.start()

    def stage_started(self, index: int, num_stages: int, num_users: int, duration_s: float) -> None:
        self._stage_line = f"stage {index + 1}/{num_stages}: {num_users} simulated users"
        self._redraw()

    def progress(self, frame: DemoFrame) -> None:
        self._frame = frame
        self._history.append(frame.throughput_rps)
        self._redraw()

    def stage_finished(self, result: StageResult, num_stages: int) -> None:
        self._finished.append(result)
        self._redraw()

    def close(self) -> None:
        self._live.stop()

    def _redraw(self) -> None:
        self._live.update(self._render(), refresh=True)

    def _render(self) -> RenderableType:
        frame = self._frame
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("stage", self._stage_line)
        if frame is not None:
            grid.add_row("elapsed", f"{frame.elapsed_s:.1f} s of {frame.total_s:.0f} s")
            grid.add_row(
                "throughput",
                f"{frame.throughput_rps:,.1f} req/s   p50 {_ms(frame.p50_ms)}   "
                f"p99 {_ms(frame.p99_ms)}",
            )
            grid.add_row("requests", f"{frame.num_requests:,}   errors {frame.num_errors}")
            grid.add_row(
                "gateway",
                f"mean batch {_num(frame.mean_batch_size)}   queue {_num(frame.queue_depth, 0)}   "
                f"replicas ready {_replicas(frame)}",
            )
            grid.add_row("req/s", Text(sparkline(list(self._history)), style="cyan"))
        parts: list[RenderableType] = [grid]
        if self._finished:
            parts.append(_stage_table(self._finished))
        # A fixed width keeps the panel from jumping as numbers change length.
        width = min(self._live.console.width, _PANEL_WIDTH)
        return Panel(Group(*parts), title="aiscale demo: minilm embeddings", width=width)


class PlainView:
    """Plain lines: one per stage start and end, and a progress line every few seconds."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._next_line_s = _PLAIN_EVERY_S

    def _say(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def stage_started(self, index: int, num_stages: int, num_users: int, duration_s: float) -> None:
        self._say(
            f"stage {index + 1}/{num_stages}: {num_users} simulated users for {duration_s:.1f} s"
        )

    def progress(self, frame: DemoFrame) -> None:
        if frame.elapsed_s < self._next_line_s:
            return
        self._next_line_s = frame.elapsed_s + _PLAIN_EVERY_S
        self._say(
            f"  {frame.elapsed_s:5.1f} s  {frame.num_users} users  "
            f"{frame.throughput_rps:,.1f} req/s  p50 {_ms(frame.p50_ms)}  p99 {_ms(frame.p99_ms)}  "
            f"errors {frame.num_errors}  batch {_num(frame.mean_batch_size)}  "
            f"queue {_num(frame.queue_depth, 0)}  replicas {_replicas(frame)}"
        )

    def stage_finished(self, result: StageResult, num_stages: int) -> None:
        self._say(
            f"stage {result.index + 1}/{num_stages} done: {result.num_users} users  "
            f"{result.num_requests} requests  {result.throughput_rps:,.1f} req/s  "
            f"p50 {_ms(result.p50_ms)}  p99 {_ms(result.p99_ms)}  "
            f"mean batch {_num(result.mean_batch_size)}  errors {result.num_errors}"
        )

    def close(self) -> None:
        pass


#: Where ``aiscale serve`` listens by default: the closing report's suggestions point there.
_SERVE_URL = "http://127.0.0.1:8000"


def render_summary(summary: DemoSummary, *, is_data_dir_temporary: bool) -> list[RenderableType]:
    """The closing report: the per-stage table, the endpoints, a curl example, the data dir."""
    body = '{"model": "minilm", "input": "hello world"}'
    lines = [f"total: {summary.num_requests:,} requests, {summary.num_errors} errors"]
    if summary.url:
        # The demo's own server has stopped: its URLs would lead nowhere, so point at the
        # server the user starts next.
        lines += [
            f"The demo server ({summary.url}) has stopped. To keep one running: aiscale serve",
            f"then, at {_SERVE_URL}: dashboard /dashboard, metrics /metrics, "
            "OpenAI /v1/embeddings, OIP v2 /v2/models/minilm/infer",
            f"curl: curl -s {_SERVE_URL}/v1/embeddings -H 'content-type: application/json' "
            f"-d '{body}'",
        ]
    if summary.cold_start_s is not None:
        started = f"cold start: {summary.cold_start_s:.1f} s from launch to the first embedding"
        lines.insert(0, started)
    if summary.is_interrupted:
        lines.insert(0, "interrupted: the load and the server were stopped")
    where = f"data dir: {summary.data_dir}"
    lines.append(f"{where} (temporary, removed)" if is_data_dir_temporary else where)
    parts: list[RenderableType] = []
    if summary.stages:
        parts.append(_stage_table(list(summary.stages), title="per stage"))
    return [*parts, *(Text(line) for line in lines)]
