"""``aiscale serve``, ``scale`` and ``deploy`` as a user runs them: real processes, loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
AISCALE = [sys.executable, "-m", "aiscale.cli"]


def start_serve(*args: str, data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*AISCALE, "serve", *args, "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.search(r"aiscale serving on (http://\S+)", line)
        if found:
            return process, found.group(1)
    process.kill()
    _, errors = process.communicate(timeout=30)
    raise AssertionError(f"server did not start: {errors}")


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    process, url = start_serve("tests.models:Echo", "--max-batch-size", "8", data_dir=tmp_path)
    yield process, url, tmp_path
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


def run_cli(*args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--data-dir", str(data_dir)] if data_dir else []
    return subprocess.run(
        [*AISCALE, *args, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )


def test_serve_scale_deploy_and_stop(echo_server: tuple[subprocess.Popen[str], str, Path]) -> None:
    """serve registers and serves an import path; scale and deploy change it live; SIGTERM
    drains and stops every replica with exit status 0."""
    process, url, data_dir = echo_server
    assert httpx.post(f"{url}/v2/models/echo/infer", json=TEXT).json()["outputs"][0]["data"] == [
        "hi"
    ]

    scaled = run_cli("scale", "echo", "2", "--url", url)
    assert scaled.returncode == 0, scaled.stderr
    assert "ready 2 / wanted 2" in scaled.stdout
    pids = httpx.get(f"{url}/admin/deployments/echo").json()["replicas"]["pids"]
    assert len(pids) == 2

    deployed = run_cli("deploy", "echo2", "--model", "echo", "--replicas", "1", "--url", url)
    assert deployed.returncode == 0, deployed.stderr
    assert httpx.post(f"{url}/v2/models/echo2/infer", json=TEXT).status_code == 200

    listed = run_cli("models", "list", data_dir=data_dir)
    assert "echo" in listed.stdout

    process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal after its graceful shutdown, the Unix convention.
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_cli_errors_are_one_line(echo_server: tuple[subprocess.Popen[str], str, Path]) -> None:
    """Unknown deployments, bad counts and unreachable servers: a message and exit status 1."""
    _, url, _ = echo_server
    missing = run_cli("scale", "nope", "2", "--url", url)
    assert missing.returncode == 1 and "no deployment named 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr
    negative = run_cli("scale", "echo", "--url", url, "--", "-1")
    assert negative.returncode != 0 and "Traceback" not in negative.stderr
    unreachable = run_cli("scale", "echo", "2", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


def test_refuses_public_address_without_keys(tmp_path: Path) -> None:
    """Bound to a non-loopback address with no API keys, serve refuses unless --insecure."""
    result = run_cli(
        "serve", "tests.models:Echo", "--host", "0.0.0.0", "--port", "0", data_dir=tmp_path
    )
    assert result.returncode == 1
    assert "without API keys" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_nats_for_capture_is_a_clear_startup_error(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "tests.models:Echo", "--port", "0", "--nats-url", "nats://127.0.0.1:1",
        data_dir=tmp_path,
    )
    assert result.returncode != 0
    assert "cannot connect to NATS at nats://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    """Requests already being served when SIGTERM arrives are answered before the exit."""
    import concurrent.futures

    process, url = start_serve(
        "tests.models:Slow", "--max-batch-size", "1", "--max-batch-delay-ms", "0", data_dir=tmp_path
    )
    try:
        with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(client.post, f"{url}/v2/models/slow/infer", json=TEXT) for _ in range(4)
            ]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                depth = httpx.get(f"{url}/metrics").text
                if 'aiscale_batcher_queue_depth{deployment="slow",version="1"} 3.0' in depth:
                    break
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            statuses = [f.result().status_code for f in futures]
        assert statuses == [200, 200, 200, 200]
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_version_and_plain_help_with_defaults() -> None:
    """``--version`` prints the version; ``serve --help`` shows each default and no type tag
    of a flag (``<bool>``) or a stray " ." where rich markup ate a "[default: ...]"."""
    from aiscale import __version__

    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"aiscale {__version__}"
    shown = run_cli("serve", "--help")
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "<bool>" not in text and " ." not in text
    assert "[default: 127.0.0.1]" in text and "[default: minilm]" in text


def test_a_model_that_fails_to_import_is_one_message(tmp_path: Path) -> None:
    """A model whose module does not import: its cause is printed once, with no traceback,
    and serve exits non-zero."""
    result = run_cli("serve", "tests.no_such_module:Model", "--port", "0", data_dir=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("No module named 'tests.no_such_module'") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "Application startup failed" not in result.stderr


def test_serve_prints_the_dashboard_and_a_busy_port_is_named(tmp_path: Path) -> None:
    """serve announces the dashboard's address; a second serve on the same port fails with
    one line naming that port."""
    process, url = start_serve("tests.models:Echo", data_dir=tmp_path)
    try:
        assert process.stdout is not None
        assert f"dashboard: {url}/dashboard" in process.stdout.readline()
        port = url.rsplit(":", 1)[1]
        busy = run_cli(
            "serve", "tests.models:Echo", "--port", port, data_dir=tmp_path / "second"
        )
        assert busy.returncode == 1
        assert f"cannot bind 127.0.0.1:{port}: Address already in use" in busy.stderr
        assert "Traceback" not in busy.stderr
    finally:
        process.kill()
        process.communicate(timeout=30)
