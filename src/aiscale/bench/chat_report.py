"""Terminal rendering for ``aiscale bench --chat``: a live rich progress bar and the result table.

The CLI does::

    with chat_progress(console) as on_progress:
        result = chat_bench_command(url, ..., on_progress=on_progress)
    console.print(render_chat_result(result))   # or print(json.dumps(result.to_json()))

This module only formats; it never runs requests and never judges a result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from aiscale.bench.chat_results import ChatBenchResult, ChatProgress, LatencySummary

__all__ = ["chat_progress", "format_chat_snapshot", "render_chat_result"]


@contextmanager
def chat_progress(
    console: Console | None = None, *, description: str = "chat bench"
) -> Iterator[Callable[[ChatProgress], None]]:
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
        task = progress.add_task(description, total=1.0, stats="probing the server")

        def on_progress(snapshot: ChatProgress) -> None:
            stats = format_chat_snapshot(snapshot)
            if snapshot.fraction_done is None:
                progress.update(task, total=None, stats=stats)
            else:
                progress.update(task, completed=snapshot.fraction_done, stats=stats)

        yield on_progress


def format_chat_snapshot(snapshot: ChatProgress) -> str:
    """One line: counts, tokens/s, recent TTFT and ITL p50, errors, drops, streams open."""
    phase = "warm-up " if snapshot.is_warmup else ""
    text = (
        f"{phase}{snapshot.requests} req  {snapshot.output_tokens_per_s:,.1f} tok/s  "
        f"TTFT p50 {_ms(snapshot.ttft_p50_ms)}  ITL p50 {_ms(snapshot.itl_p50_ms)}  "
        f"errors {snapshot.errors}"
    )
    if snapshot.dropped_by_client:
        text += f"  dropped {snapshot.dropped_by_client}"
    return text + f"  streams {snapshot.outstanding}"


def render_chat_result(result: ChatBenchResult) -> Table:
    """The result as a two-column rich table (metric, value), notes last."""
    table = Table(title=f"aiscale bench --chat ({result.workload.replace('_', '-')})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("model", result.model),
        ("requests", f"{result.requests:,}"),
        ("ok", f"{result.ok:,}"),
    ]
    if result.errors_by_kind:
        rows += [(f"errors {kind}", f"{n:,}") for kind, n in sorted(result.errors_by_kind.items())]
    else:
        rows.append(("errors", "0"))
    if result.workload in ("open", "trace"):
        rows.append(("dropped by client", f"{result.dropped_by_client:,}"))
        rows.append(("offered rate", _rate(result.offered_rate_rps, "req/s")))
    rows += [
        ("duration", f"{result.duration_s:.2f} s"),
        ("requests/s", _rate(result.requests_per_s, "req/s")),
        ("output tokens/s", _rate(result.output_tokens_per_s, "tok/s")),
    ]
    if result.steady_output_tokens_per_s is not None:
        rows.append(("steady output tokens/s", _rate(result.steady_output_tokens_per_s, "tok/s")))
    rows += [
        ("output tokens", f"{result.output_tokens:,} of {result.requested_output_tokens:,} asked"),
        ("prompt tokens (cached)", f"{result.prompt_tokens:,} ({result.cached_prompt_tokens:,})"),
    ]
    rows += _latency_rows("TTFT", result.ttft)
    rows += _latency_rows("ITL", result.itl)
    rows += [
        ("TPOT p50", _ms(result.tpot.p50_ms)),
        ("e2e p50", _ms(result.e2e.p50_ms)),
        ("e2e p99", _ms(result.e2e.p99_ms)),
    ]
    share = f" ({result.num_good / result.ok:.0%} of ok)" if result.ok else ""
    rows.append(
        (
            f"goodput (TTFT <= {result.slo_ttft_ms:g} ms, ITL <= {result.slo_itl_ms:g} ms)",
            f"{result.goodput_rps:,.2f} req/s{share}",
        )
    )
    if result.ignore_eos and result.num_short_outputs:
        rows.append(("short outputs despite ignore_eos", f"{result.num_short_outputs:,}"))
    if result.client_cpu_share is not None:
        rows.append(("client CPU", f"{result.client_cpu_share:.0%} of one core"))
    for label, value in rows:
        table.add_row(label, value)
    for note in result.notes:
        table.add_row("note", note)
    return table


def _latency_rows(name: str, summary: LatencySummary) -> list[tuple[str, str]]:
    return [(f"{name} p50", _ms(summary.p50_ms)), (f"{name} p99", _ms(summary.p99_ms))]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _rate(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:,.2f} {unit}"
