"""A real ``aiscale serve`` and ``aiscale bench`` as child processes, for measurements.

The calibration (``calibration.py``) and the benchmarks that set the simulator against a
served replica start the server, load it and read its ``/metrics`` through these functions,
so that both measure the same way. Output of the children is parsed, never printed; a
server is always stopped when its block ends.
"""

from __future__ import annotations

import contextlib
import json
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from aiscale.errors import ModelLoadError


def scrape_histograms(url: str, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``(sum, count)`` of each histogram in ``names`` on the server's ``/metrics``, summed
    over its label sets."""
    text = httpx.get(url + "/metrics", timeout=10.0).text
    out = {}
    for name in names:
        total = sum(float(v) for v in re.findall(rf"^{name}_sum{{[^}}]*}} (\S+)$", text, re.M))
        count = sum(float(v) for v in re.findall(rf"^{name}_count{{[^}}]*}} (\S+)$", text, re.M))
        out[name] = (total, count)
    return out


def run_bench(
    target: str, flags: Sequence[str], workdir: Path, env: Mapping[str, str], timeout_s: float = 300
) -> dict[str, Any]:
    """``aiscale bench TARGET FLAGS --json`` in a child process; its JSON result. Raises
    ``ModelLoadError`` when it fails or times out."""
    command = [sys.executable, "-m", "aiscale.cli", "bench", target, *flags, "--json"]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=workdir,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(f"load {list(flags)} timed out", field="model") from exc
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"load {list(flags)} failed: {detail}", field="model")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@contextlib.contextmanager
def served(
    model: str,
    data_dir: str,
    workdir: Path,
    env: Mapping[str, str],
    timeout_s: float,
    num_threads: int | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[str]:
    """Run ``aiscale serve MODEL`` (one replica, port 0, data in ``data_dir``, then
    ``extra_args``) until the block ends; yields its base URL once its readiness endpoint
    answers. The process is always stopped (terminate, then kill after 30 s)."""
    command = [
        sys.executable, "-m", "aiscale.cli", "serve", model,
        "--port", "0", "--replicas", "1", "--data-dir", data_dir,
        *(["--num-threads", str(num_threads)] if num_threads is not None else []),
        *extra_args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=workdir,
        env=dict(env),
    )
    try:
        url = _read_url(process, timeout_s)
        _wait_ready(url, timeout_s)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _read_url(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(deadline - time.monotonic(), 0.0)):
                break
            line = process.stdout.readline()
            if not line:
                break
            found = re.search(r"aiscale serving on (http://\S+)", line)
            if found:
                return found.group(1)
    raise ModelLoadError("aiscale serve did not start", field="model")


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if client.get(url + "/v2/health/ready").status_code == 200:
                    return
            time.sleep(0.1)  # a polled health endpoint with a deadline, in a plain process
    raise ModelLoadError("aiscale serve never became ready", field="model")
