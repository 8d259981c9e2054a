"""What a benchmark run reports: live ``ProgressSnapshot``s and the final ``BenchResult``.

Plain frozen values and the percentile arithmetic; no I/O, no clock. ``loadgen.py`` fills them,
``report.py`` renders them, the CLI prints ``BenchResult.to_json()`` for ``--json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BenchResult", "Mode", "ProgressSnapshot", "percentile_ms"]

Mode = Literal["closed", "open", "trace"]


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """What a run has done so far, handed to ``on_progress`` every ``progress_interval_s``.

    ``p50_ms``/``p99_ms`` cover the successful requests completed since the previous snapshot
    (``None`` if there were none). ``fraction_done`` is in [0, 1], ``None`` when unknown.
    """

    elapsed_s: float
    is_warmup: bool
    requests: int
    ok: int
    errors: int
    dropped_by_client: int
    outstanding: int
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    fraction_done: float | None


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Outcome of one run. Latencies (ms) cover successful (2xx) counted requests only.

    ``requests`` = counted requests sent and finished (ok + errors); ``errors_by_status`` maps
    status to count, with 0 for connection errors and timeouts. ``throughput_rps`` = ok per
    second of the counted window. ``offered_rate_rps`` = counted arrivals (sent or dropped) per
    second, open modes only. ``client_cpu_us_per_request`` is this process's CPU time per request
    sent (warm-up included), to show what the load generator took from a shared machine.
    """

    mode: Mode
    requests: int
    ok: int
    errors_by_status: dict[int, int]
    dropped_by_client: int
    duration_s: float
    throughput_rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    offered_rate_rps: float | None
    client_cpu_us_per_request: float | None = None

    @property
    def num_errors(self) -> int:
        """All counted requests that were not 2xx."""
        return sum(self.errors_by_status.values())

    def failure_reason(self, max_error_rate: float) -> str | None:
        """Why this run did not measure a working server, or None: no counted request
        finished, or more than ``max_error_rate`` (a share, 0-1) of them were not 2xx. The
        reason names the commonest statuses (0: no connection or a timeout)."""
        if self.requests == 0:
            return "no counted request finished"
        share = self.num_errors / self.requests
        if share <= max_error_rate:
            return None
        common = sorted(self.errors_by_status.items(), key=lambda kv: -kv[1])[:3]
        kinds = ", ".join(
            f"{count:,} x {_STATUS_MEANING.get(status, f'status {status}')}"
            for status, count in common
        )
        return (
            f"{self.num_errors:,} of {self.requests:,} requests failed ({share:.1%}, more than "
            f"--max-error-rate {max_error_rate:.1%}): {kinds}"
        )

    def to_json(self) -> dict[str, object]:
        """Plain JSON-ready dict; ``errors`` is the total, ``errors_by_status`` keyed by string."""
        return {
            "mode": self.mode,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.num_errors,
            "errors_by_status": {str(k): v for k, v in sorted(self.errors_by_status.items())},
            "dropped_by_client": self.dropped_by_client,
            "duration_s": self.duration_s,
            "throughput_rps": self.throughput_rps,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
            "offered_rate_rps": self.offered_rate_rps,
            "client_cpu_us_per_request": self.client_cpu_us_per_request,
        }


_STATUS_MEANING = {
    0: "no connection or timed out",
    404: "404 (unknown model or path?)",
    429: "429 (rate limited)",
    503: "503 (overloaded or no replica)",
}


def percentile_ms(ordered: list[float], q: float) -> float | None:
    """Linear-interpolated percentile ``q`` (0-100) of ascending seconds, in ms; None if empty."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return value * 1000.0
