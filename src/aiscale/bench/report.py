"""Terminal rendering for ``aiscale bench``: a live rich progress bar and the result table.

The CLI does::

    with bench_progress(console) as on_progress:
        result = bench_command(url, ..., on_progress=on_progress)
    console.print(render_result(result))   # or print(json.dumps(result.to_json())) for --json

This module only formats; it never runs requests and never decides what a result means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from aiscale.bench.loadgen import BenchResult, ProgressSnapshot

__all__ = ["bench_progress", "format_snapshot", "render_progress", "render_result"]


@contextmanager
def bench_progress(
    console: Console | None = None, *, description: str = "bench"
) -> Iterator[Callable[[ProgressSnapshot], None]]:
    """Show a live progress bar; yields the ``on_progress`` callback that feeds it."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
    )
    with progress:
        task = progress.add_task(description, total=1.0, stats="starting")

        def on_progress(snapshot: ProgressSnapshot) -> None:
            render_progress(progress, task, snapshot)

        yield on_progress


def render_progress(progress: Progress, task: TaskID, snapshot: ProgressSnapshot) -> None:
    """Update ``task`` of ``progress`` from ``snapshot`` (bar position and live numbers)."""
    if snapshot.fraction_done is None:
        progress.update(task, total=None, stats=format_snapshot(snapshot))
    else:
        progress.update(task, completed=snapshot.fraction_done, stats=format_snapshot(snapshot))


def format_snapshot(snapshot: ProgressSnapshot) -> str:
    """One line: phase, counts, throughput, recent p50/p99, errors, drops, requests in flight."""
    phase = "warm-up " if snapshot.is_warmup else ""
    text = (
        f"{phase}{snapshot.requests} req  {snapshot.throughput_rps:,.1f} req/s  "
        f"p50 {_ms(snapshot.p50_ms)}  p99 {_ms(snapshot.p99_ms)}  "
        f"errors {snapshot.errors}"
    )
    if snapshot.dropped_by_client:
        text += f"  dropped {snapshot.dropped_by_client}"
    return text + f"  in flight {snapshot.outstanding}"


def render_result(result: BenchResult) -> Table:
    """The result as a two-column rich table (metric, value)."""
    table = Table(title=f"aiscale bench ({result.mode} loop)", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("requests", f"{result.requests:,}")
    table.add_row("ok", f"{result.ok:,}")
    if result.errors_by_status:
        for status, count in sorted(result.errors_by_status.items()):
            label = "connection errors" if status == 0 else f"errors {status}"
            table.add_row(label, f"{count:,}")
    else:
        table.add_row("errors", "0")
    if result.mode != "closed":
        table.add_row("dropped by client", f"{result.dropped_by_client:,}")
        table.add_row("offered rate", _rate(result.offered_rate_rps))
    table.add_row("duration", f"{result.duration_s:.2f} s")
    table.add_row("throughput", _rate(result.throughput_rps))
    for label, value in (
        ("latency p50", result.p50_ms),
        ("latency p90", result.p90_ms),
        ("latency p99", result.p99_ms),
        ("latency p99.9", result.p999_ms),
        ("latency max", result.max_ms),
        ("latency mean", result.mean_ms),
    ):
        table.add_row(label, _ms(value))
    if result.client_cpu_us_per_request is not None:
        table.add_row("client CPU / request", f"{result.client_cpu_us_per_request:.0f} µs")
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} req/s"
