"""The load generator: closed loop, open loop (Poisson) or trace replay against one HTTP URL.

``run_bench(config)`` sends POST requests and returns a ``BenchResult``: counts, errors by status
(0 for connection errors and timeouts), requests the client dropped, throughput and latency
percentiles of the successful requests.

* closed loop (``concurrency``): each of N workers sends its next request when the previous one
  is answered;
* open loop (``rate_per_s``): Poisson arrivals, sent on schedule whatever the replies; latency is
  measured from the *scheduled* send time, so a slow server cannot hide queueing delay
  (no coordinated omission);
* trace (``trace_path``): like the open loop, with arrivals from a CSV trace.

In both open modes at most ``max_outstanding`` requests are in flight; an arrival that finds the
cap full is not sent and counts as ``dropped_by_client``. Requests sent during the first
``warmup_s`` seconds are not counted; ``duration_s`` is the counted window after the warm-up.
``num_requests`` counts arrivals after the warm-up (in open modes dropped ones included).

A server that cannot be reached ends the run early: when the first
``EARLY_CONNECT_FAILURES`` requests in a row fail to connect before any reply came back,
``run_bench`` raises ``UpstreamUnavailable`` naming the address, rather than sending
thousands of requests that all fail the same way.

Intervals use ``time.perf_counter``; the wall clock is never used. This module does not parse
command-line strings (``command.py`` does) and never prints (``report.py`` renders).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiscale.bench.http_client import ClientKind, ConnectFailed, HttpClient, open_client
from aiscale.bench.payloads import derive_bodies
from aiscale.bench.results import BenchResult, Mode, ProgressSnapshot, percentile_ms
from aiscale.bench.traces import load_arrivals
from aiscale.errors import InvalidInput, UpstreamUnavailable

__all__ = ["EARLY_CONNECT_FAILURES", "BenchConfig", "BenchResult", "ProgressSnapshot", "run_bench"]

#: Connection failures in a row, before any reply, after which the run stops.
EARLY_CONNECT_FAILURES = 3


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Every knob of one benchmark run; validated on construction (raises ``InvalidInput``).

    ``body`` is the exact body sent with every request; ``None`` derives bodies from the URL path
    (see ``payloads.py``). ``headers`` are sent with every request. ``timeout_s`` bounds each
    request; a timed-out request counts as an error with status 0.
    """

    url: str
    concurrency: int = 1
    rate_per_s: float | None = None
    trace_path: Path | None = None
    rate_scale: float = 1.0
    time_scale: float = 1.0
    num_requests: int | None = None
    duration_s: float | None = None
    warmup_s: float = 0.0
    body: bytes | None = None
    model: str = "minilm"
    headers: tuple[tuple[str, str], ...] = ()
    seed: int = 0
    max_outstanding: int = 1024
    timeout_s: float = 30.0
    progress_interval_s: float = 0.5
    client: ClientKind = "raw"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(
                f"url must be http://host[:port]/path, got {self.url!r}", field="url"
            )
        try:
            _ = parts.port
        except ValueError:
            raise InvalidInput(f"url has an invalid port: {self.url!r}", field="url") from None
        if self.client not in ("raw", "aiohttp"):
            raise InvalidInput(
                f"client must be 'raw' or 'aiohttp', got {self.client!r}", field="client"
            )
        if self.client == "raw" and parts.scheme != "http":
            raise InvalidInput(
                "the built-in client speaks plain http:// only; use the aiohttp client for https",
                field="url",
            )
        if self.rate_per_s is not None and self.trace_path is not None:
            raise InvalidInput("give either --rate or --trace, not both", field="rate")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise InvalidInput(f"rate must be > 0 req/s, got {self.rate_per_s}", field="rate")
        if self.concurrency < 1:
            raise InvalidInput(
                f"concurrency must be >= 1, got {self.concurrency}", field="concurrency"
            )
        if self.max_outstanding < 1:
            raise InvalidInput(
                f"max outstanding must be >= 1, got {self.max_outstanding}",
                field="max_outstanding",
            )
        if self.num_requests is not None and self.num_requests < 1:
            raise InvalidInput(f"requests must be >= 1, got {self.num_requests}", field="requests")
        for name in ("duration_s", "rate_scale", "time_scale", "timeout_s", "progress_interval_s"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise InvalidInput(f"{name} must be > 0, got {value}", field=name)
        if not (self.warmup_s >= 0 and math.isfinite(self.warmup_s)):
            raise InvalidInput(f"warmup_s must be >= 0, got {self.warmup_s}", field="warmup_s")
        if self.trace_path is None and (self.rate_scale != 1.0 or self.time_scale != 1.0):
            raise InvalidInput("rate_scale and time_scale apply to --trace only", field="trace")
        if self.mode != "trace" and self.num_requests is None and self.duration_s is None:
            raise InvalidInput("give --requests or --duration (or both)", field="duration_s")

    @property
    def mode(self) -> Mode:
        """``trace`` with a trace, ``open`` with a rate, else ``closed``."""
        if self.trace_path is not None:
            return "trace"
        return "open" if self.rate_per_s is not None else "closed"


@dataclass(slots=True)
class _Tally:
    """Mutable counters of one run; owned by ``run_bench``'s event loop (no locking needed)."""

    tickets: float  # counted arrivals still allowed (math.inf without --requests)
    sent: int = 0  # every request sent, warm-up included
    requests: int = 0
    ok: int = 0
    dropped: int = 0
    outstanding: int = 0
    arrivals: int = 0  # counted arrivals (sent or dropped)
    errors: dict[int, int] = field(default_factory=dict)
    latencies_s: array[float] = field(default_factory=lambda: array("d"))
    window_s: list[float] = field(default_factory=list)
    last_done: float = 0.0

    def record(self, status: int, latency_s: float, done: float) -> None:
        self.requests += 1
        self.last_done = done
        if 200 <= status < 300:
            self.ok += 1
            self.latencies_s.append(latency_s)
            self.window_s.append(latency_s)
        else:
            self.errors[status] = self.errors.get(status, 0) + 1


async def run_bench(
    config: BenchConfig, *, on_progress: Callable[[ProgressSnapshot], None] | None = None
) -> BenchResult:
    """Run the benchmark described by ``config`` and return its result.

    ``on_progress`` is called from the event loop every ``config.progress_interval_s`` and once
    at the end; it must be quick. Raises ``InvalidInput`` for a body that cannot be derived or
    an unreadable trace, before any request is sent.
    """
    bodies = derive_bodies(urlsplit(config.url).path, model=config.model, body=config.body)
    arrivals: list[float] | None = None
    if config.trace_path is not None:
        cut = None if config.duration_s is None else config.warmup_s + config.duration_s
        arrivals = load_arrivals(
            config.trace_path,
            rate_scale=config.rate_scale,
            time_scale=config.time_scale,
            duration_s=cut,
        )
    rng = random.Random(config.seed)
    limit = config.concurrency if config.mode == "closed" else config.max_outstanding
    client = open_client(
        config.url,
        headers=config.headers,
        max_connections=limit,
        timeout_s=config.timeout_s,
        kind=config.client,
    )
    tally = _Tally(tickets=math.inf if config.num_requests is None else config.num_requests)
    cpu_start = time.process_time()
    start = time.perf_counter()
    run = _Run(config, client, bodies, rng, tally, start)
    try:
        async with asyncio.TaskGroup() as group:
            ticker = None
            if on_progress is not None:
                ticker = group.create_task(run.report_progress(on_progress, arrivals))
            if config.mode == "closed":
                await asyncio.gather(*(run.closed_worker() for _ in range(config.concurrency)))
            else:
                source = iter(arrivals) if arrivals is not None else _poisson_offsets(config, rng)
                await run.open_loop(source, group)
            await run.drained()
            if ticker is not None:
                ticker.cancel()
    except BaseExceptionGroup as group:
        # A task failed on purpose (e.g. InvalidInput for a reply the client cannot read):
        # raise our own error as itself rather than wrapped in a group.
        raise _first_leaf(group) from None
    finally:
        await client.close()
    cpu_s = time.process_time() - cpu_start
    result = run.result(cpu_s)
    if on_progress is not None:
        on_progress(run.snapshot(fraction_done=1.0))
    return result


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in ``group`` that is not itself a group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _poisson_offsets(config: BenchConfig, rng: random.Random) -> Iterator[float]:
    """Endless Poisson arrival offsets (s); the open loop stops at its duration or count."""
    assert config.rate_per_s is not None
    t = 0.0
    while True:
        t += rng.expovariate(config.rate_per_s)
        yield t


class _Run:
    """The loops of one run, sharing its clock origin, client and tally."""

    __slots__ = (
        "_all_done",
        "_bodies",
        "_client",
        "_config",
        "_connect_failures",
        "_has_reply",
        "_end",
        "_last_offset",
        "_rng",
        "_start",
        "_stopped_by_duration",
        "_tally",
        "_warm_end",
    )

    def __init__(
        self,
        config: BenchConfig,
        client: HttpClient,
        bodies: tuple[bytes, ...],
        rng: random.Random,
        tally: _Tally,
        start: float,
    ) -> None:
        self._config = config
        self._client = client
        self._bodies = bodies
        self._rng = rng
        self._tally = tally
        self._start = start
        self._warm_end = start + config.warmup_s
        self._end = math.inf if config.duration_s is None else self._warm_end + config.duration_s
        self._stopped_by_duration = False
        self._last_offset = config.warmup_s
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._has_reply = False
        self._connect_failures = 0

    def _pick_body(self) -> bytes:
        bodies = self._bodies
        return bodies[0] if len(bodies) == 1 else bodies[self._rng.randrange(len(bodies))]

    async def _send(self, body: bytes) -> int:
        """The reply's status, or 0 for a timeout or a connection error; raises
        ``UpstreamUnavailable`` once the first requests all failed to connect."""
        try:
            status = await self._client.post(body)
        except TimeoutError:
            return 0
        except ConnectFailed as exc:
            if not self._has_reply:
                self._connect_failures += 1
                if self._connect_failures >= EARLY_CONNECT_FAILURES:
                    parts = urlsplit(self._config.url)
                    address = f"{parts.hostname}:{parts.port or 80}"
                    raise UpstreamUnavailable(
                        f"cannot connect to {address}: the first {self._connect_failures} "
                        f"requests failed ({exc}); is the server running there?",
                        field="url",
                    ) from None
            return 0
        except OSError:
            return 0
        self._has_reply = True
        return status

    async def closed_worker(self) -> None:
        tally = self._tally
        while True:
            sent_at = time.perf_counter()
            if sent_at >= self._end:
                self._stopped_by_duration = True
                return
            is_counted = sent_at >= self._warm_end
            if is_counted:
                if tally.tickets <= 0:
                    return
                tally.tickets -= 1
                tally.arrivals += 1
            tally.sent += 1
            tally.outstanding += 1
            status = await self._send(self._pick_body())
            done = time.perf_counter()
            tally.outstanding -= 1
            if is_counted:
                tally.record(status, done - sent_at, done)

    async def open_loop(self, offsets: Iterator[float], group: asyncio.TaskGroup) -> None:
        tally = self._tally
        cap = self._config.max_outstanding
        warmup_s = self._config.warmup_s
        end_offset = self._end - self._start
        for offset in offsets:
            if offset >= end_offset:
                self._stopped_by_duration = True
                break
            is_counted = offset >= warmup_s
            if is_counted and tally.tickets <= 0:
                break
            scheduled = self._start + offset
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if is_counted:
                tally.tickets -= 1
                tally.arrivals += 1
                self._last_offset = offset
            if tally.outstanding >= cap:
                if is_counted:
                    tally.dropped += 1
                continue
            tally.sent += 1
            tally.outstanding += 1
            self._all_done.clear()
            group.create_task(self._open_request(scheduled, is_counted))
        if self._stopped_by_duration:
            # Arrivals ran to the end of the window: wait it out so the window is the duration.
            delay = self._end - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _open_request(self, scheduled: float, is_counted: bool) -> None:
        tally = self._tally
        try:
            status = await self._send(self._pick_body())
            done = time.perf_counter()
            if is_counted:
                tally.record(status, done - scheduled, done)
        finally:
            tally.outstanding -= 1
            if tally.outstanding == 0:
                self._all_done.set()

    async def drained(self) -> None:
        """Wait for every request in flight (each is bounded by the client timeout)."""
        await self._all_done.wait()

    async def report_progress(
        self, on_progress: Callable[[ProgressSnapshot], None], arrivals: list[float] | None
    ) -> None:
        interval = self._config.progress_interval_s
        while True:
            await asyncio.sleep(interval)
            on_progress(self.snapshot(fraction_done=self._fraction_done(arrivals)))

    def _fraction_done(self, arrivals: list[float] | None) -> float | None:
        config = self._config
        now = time.perf_counter()
        fractions: list[float] = []
        if config.num_requests is not None:
            fractions.append(self._tally.arrivals / config.num_requests)
        if config.duration_s is not None:
            fractions.append((now - self._warm_end) / config.duration_s)
        if arrivals:
            total = arrivals[-1] - config.warmup_s
            if total > 0:
                fractions.append((now - self._warm_end) / total)
        if not fractions:
            return None
        return min(1.0, max(0.0, max(fractions)))

    def snapshot(self, *, fraction_done: float | None) -> ProgressSnapshot:
        tally = self._tally
        now = time.perf_counter()
        window = sorted(tally.window_s)
        tally.window_s.clear()
        measured_s = now - self._warm_end
        return ProgressSnapshot(
            elapsed_s=now - self._start,
            is_warmup=measured_s < 0,
            requests=tally.requests,
            ok=tally.ok,
            errors=sum(tally.errors.values()),
            dropped_by_client=tally.dropped,
            outstanding=tally.outstanding,
            throughput_rps=tally.ok / measured_s if measured_s > 0 else 0.0,
            p50_ms=percentile_ms(window, 50.0),
            p99_ms=percentile_ms(window, 99.0),
            fraction_done=fraction_done,
        )

    def result(self, cpu_s: float) -> BenchResult:
        config = self._config
        tally = self._tally
        finished = max(tally.last_done, time.perf_counter() if self._stopped_by_duration else 0.0)
        duration_s = max(0.0, finished - self._warm_end)
        offered: float | None = None
        if config.mode != "closed":
            window_s = (
                config.duration_s
                if self._stopped_by_duration and config.duration_s is not None
                else self._last_offset - config.warmup_s
            )
            offered = tally.arrivals / window_s if window_s > 0 else None
        ordered = sorted(tally.latencies_s)
        return BenchResult(
            mode=config.mode,
            requests=tally.requests,
            ok=tally.ok,
            errors_by_status=dict(sorted(tally.errors.items())),
            dropped_by_client=tally.dropped,
            duration_s=duration_s,
            throughput_rps=tally.ok / duration_s if duration_s > 0 else 0.0,
            p50_ms=percentile_ms(ordered, 50.0),
            p90_ms=percentile_ms(ordered, 90.0),
            p99_ms=percentile_ms(ordered, 99.0),
            p999_ms=percentile_ms(ordered, 99.9),
            max_ms=ordered[-1] * 1000.0 if ordered else None,
            mean_ms=sum(ordered) / len(ordered) * 1000.0 if ordered else None,
            offered_rate_rps=offered,
            client_cpu_us_per_request=cpu_s / tally.sent * 1e6 if tally.sent else None,
        )
