"""``aiscale bench URL``: turn the command-line arguments into a ``BenchConfig`` and run it.

``bench_command`` takes the CLI's arguments as plain values, validates them (raising
``InvalidInput`` with a message fit for the terminal), runs the benchmark on a fresh event loop
and returns the ``BenchResult``, so the Typer command only wires flags and prints. This module
never prints and never exits the process.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from aiscale.bench.http_client import ClientKind
from aiscale.bench.loadgen import BenchConfig, BenchResult, ProgressSnapshot, run_bench
from aiscale.bench.payloads import derive_bodies
from aiscale.errors import InvalidInput

__all__ = [
    "DEFAULT_DURATION_S",
    "bench_command",
    "build_config",
    "check_max_error_rate",
    "parse_header",
]

DEFAULT_DURATION_S = 10.0
"""Counted window when neither --requests nor --duration is given (closed and open loop)."""


def check_max_error_rate(value: float) -> float:
    """``value`` if it is a share in [0, 1]; ``InvalidInput`` (field ``max_error_rate``) else."""
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidInput(
            f"--max-error-rate must be a share in [0, 1] (0.01 = 1%), got {value}",
            field="max_error_rate",
        )
    return value


_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_RESERVED_HEADERS = {"content-length", "transfer-encoding", "host", "connection"}


def build_config(
    url: str,
    *,
    concurrency: int = 1,
    rate: float | None = None,
    trace: str | Path | None = None,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    requests: int | None = None,
    duration: float | None = None,
    warmup: float = 0.0,
    body: str | None = None,
    body_file: str | Path | None = None,
    model: str = "minilm",
    headers: Sequence[str] = (),
    seed: int = 0,
    timeout: float = 30.0,
    max_outstanding: int = 1024,
    client: ClientKind = "raw",
) -> BenchConfig:
    """Validate the CLI arguments and return the run's ``BenchConfig``.

    Raises ``InvalidInput`` (with ``field`` set to the flag's name) for a bad URL, a rate or
    scale <= 0, both --rate and --trace, both --body and --body-file, a body that is not JSON,
    a missing trace or body file, a malformed header, or a URL path whose body cannot be derived.
    Without --requests and --duration, closed and open loop run for ``DEFAULT_DURATION_S``.
    """
    if body is not None and body_file is not None:
        raise InvalidInput("give either --body or --body-file, not both", field="body")
    raw_body: bytes | None = None
    if body is not None:
        raw_body = _checked_json(body.encode(), "--body")
    elif body_file is not None:
        try:
            content = Path(body_file).read_bytes()
        except OSError as exc:
            raise InvalidInput(
                f"cannot read --body-file {body_file}: {exc.strerror}", field="body_file"
            ) from exc
        raw_body = _checked_json(content, f"--body-file {body_file}")
    trace_path = None if trace is None else Path(trace)
    if trace_path is not None and not trace_path.is_file():
        raise InvalidInput(f"trace file not found: {trace_path}", field="trace")
    if trace_path is None and requests is None and duration is None:
        duration = DEFAULT_DURATION_S
    config = BenchConfig(
        url=url,
        concurrency=concurrency,
        rate_per_s=rate,
        trace_path=trace_path,
        rate_scale=rate_scale,
        time_scale=time_scale,
        num_requests=requests,
        duration_s=duration,
        warmup_s=warmup,
        body=raw_body,
        model=model,
        headers=tuple(parse_header(h) for h in headers),
        seed=seed,
        timeout_s=timeout,
        max_outstanding=max_outstanding,
        client=client,
    )
    derive_bodies(urlsplit(url).path, model=model, body=raw_body)  # fail before the run
    return config


def bench_command(
    url: str,
    *,
    on_progress: Callable[[ProgressSnapshot], None] | None = None,
    concurrency: int = 1,
    rate: float | None = None,
    trace: str | Path | None = None,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    requests: int | None = None,
    duration: float | None = None,
    warmup: float = 0.0,
    body: str | None = None,
    body_file: str | Path | None = None,
    model: str = "minilm",
    headers: Sequence[str] = (),
    seed: int = 0,
    timeout: float = 30.0,
    max_outstanding: int = 1024,
    client: ClientKind = "raw",
) -> BenchResult:
    """Validate the arguments (see ``build_config``), run the benchmark, return its result.

    Runs on a new event loop (uvloop when installed: it halves the client's CPU per request),
    so it must not be called from inside a running loop; use ``run_bench`` there.
    """
    config = build_config(
        url,
        concurrency=concurrency,
        rate=rate,
        trace=trace,
        rate_scale=rate_scale,
        time_scale=time_scale,
        requests=requests,
        duration=duration,
        warmup=warmup,
        body=body,
        body_file=body_file,
        model=model,
        headers=headers,
        seed=seed,
        timeout=timeout,
        max_outstanding=max_outstanding,
        client=client,
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(run_bench(config, on_progress=on_progress))


def parse_header(text: str) -> tuple[str, str]:
    """Parse ``'Name: value'`` into ``(name, value)``; raises ``InvalidInput`` if malformed."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.match(name):
        raise InvalidInput(f"--header must look like 'Name: value', got {text!r}", field="header")
    if "\r" in value or "\n" in value:
        raise InvalidInput(f"--header {name} has a line break in its value", field="header")
    if name.lower() in _RESERVED_HEADERS:
        raise InvalidInput(f"--header {name} is set by the load generator", field="header")
    return name, value


def _checked_json(raw: bytes, where: str) -> bytes:
    try:
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{where} is not valid JSON: {exc}", field="body") from None
    return raw


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
