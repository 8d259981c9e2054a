"""Shared pieces of the LLM benchmarks: servers, engines, the chat bench client, results.

Each script (``gateway_overhead.py``, ``routing.py``, ``token_limits.py``, ``cold_start.py``,
``weights_cold_start.py``, ``kv_restore.py``; ``run_quiet.sh`` runs them in a row) starts what
it measures itself, drives the servers with ``aiscale bench URL --chat --json`` in its own
process (so the client's CPU is not the server's Python), and writes its own section of
``benchmarks/llm/RESULTS.md`` (between ``<!-- BEGIN name -->`` and ``<!-- END name -->``)
with the machine, versions, command, numbers and their spread over interleaved rounds.

A part the benchmark needs that is missing (the gateway's LLM path, a config field, Redis,
LiteLLM) raises ``Missing`` with a message saying what and how to get it; the scripts print
that one line and exit 2 rather than a traceback.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import _version, describe_machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "llm" / "RESULTS.md"
AISCALE = [sys.executable, "-m", "aiscale.cli"]
MODEL = "smollm2"


class Missing(RuntimeError):
    """A part the benchmark needs is not there (the message says what, and how to get it)."""


# ---------------------------------------------------------------------- machine and results


def machine() -> dict[str, Any]:
    """The machine and the versions that matter for these numbers."""
    info = describe_machine(ROOT)
    for package in ("aiscale", "xllamacpp", "aiohttp", "litellm", "redis"):
        info[package] = _version(package)
    info["load_average_at_start"] = os.getloadavg()[0]
    return info


def machine_lines(info: Mapping[str, Any]) -> list[str]:
    return [
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']:.0f} GB; "
        f"{info['platform']}; Python {info['python']}",
        f"- versions: aiscale {info['aiscale']} (git {info['git_sha']}), xllamacpp "
        f"{info['xllamacpp']}, aiohttp {info['aiohttp']}, litellm {info['litellm']}",
        f"- date: {info['date']}; load average at start {info['load_average_at_start']:.2f} "
        "(a quiet machine reads below 0.3)",
    ]


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    """Replace the section ``name`` of ``path`` (between its markers) with ``markdown``;
    append it when the file has no such section yet."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = path.read_text() if path.exists() else "# LLM serving benchmarks\n"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text + "\n" + block
    path.write_text(text.rstrip() + "\n")


def spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """``median (min-max, n=N)`` of ``values``; ``-`` when empty."""
    if not values:
        return "-"
    middle = fmt.format(statistics.median(values))
    if len(values) == 1:
        return f"{middle} (n=1)"
    return f"{middle} ({fmt.format(min(values))}-{fmt.format(max(values))}, n={len(values)})"


def announce_duration(seconds: float) -> None:
    """Print how long the run should take with these settings on the quiet 2-core machine
    (an estimate from the script's own model of its steps; a loaded machine takes longer)."""
    print(f"expected duration: ~{seconds / 60:.1f} min ({seconds:.0f} s) on a quiet machine",
          flush=True)


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *[str(a) for a in sys.argv]])


# ---------------------------------------------------------------------- the chat bench


def chat_bench(url: str, *args: str, timeout_s: float = 900) -> dict[str, Any]:
    """Run ``aiscale bench URL --chat --json ARGS`` in its own process; its JSON report.

    Failed requests do not fail the call (``--max-error-rate 1``): the report counts them."""
    command = [*AISCALE, "bench", url, "--chat", "--json", "--max-error-rate", "1", *args]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT
    )
    lines = [x for x in completed.stdout.splitlines() if x.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"aiscale bench {url} failed: {' | '.join(tail)}")
    return dict(json.loads(lines[-1]))


def chat_bench_parallel(
    runs: Sequence[tuple[str, Sequence[str]]], timeout_s: float = 900
) -> list[dict[str, Any]]:
    """Several ``chat_bench`` runs at once (one process each); their reports in order."""
    processes = [
        subprocess.Popen(
            [*AISCALE, "bench", url, "--chat", "--json", "--max-error-rate", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        for url, args in runs
    ]  # fmt: skip
    reports = []
    for (url, _), process in zip(runs, processes, strict=True):
        out, err = process.communicate(timeout=timeout_s)
        lines = [x for x in out.splitlines() if x.startswith("{")]
        if process.returncode != 0 or not lines:
            raise RuntimeError(f"aiscale bench {url} failed: {err.strip()[-400:]}")
        reports.append(dict(json.loads(lines[-1])))
    return reports


def first_token_s(url: str, started: float, *, model: str = MODEL,
                  headers: Mapping[str, str] | None = None, timeout_s: float = 300) -> float:
    """Stream one chat request to ``url`` (a base URL) until its first content token; the
    seconds since ``started`` (a ``perf_counter``)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4, "stream": True}  # fmt: skip
    with httpx.Client(timeout=timeout_s) as client, client.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=dict(headers or {})
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.read()[:200]!r}")
        for line in response.iter_lines():
            if '"content":"' in line.replace(" ", "") and '"content":""' not in line:
                return time.perf_counter() - started
    raise RuntimeError(f"{url} streamed no token")


# ---------------------------------------------------------------------- aiscale serve


@dataclass
class Served:
    """A running ``aiscale serve``: its process, base URL, data dir and log file."""

    process: subprocess.Popen[str]
    url: str
    data_dir: Path
    log: Path
    started: float
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        stop_process(self.process)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text().strip().splitlines()[-lines:])
        except OSError:
            return ""


def serve(
    args: Sequence[str],
    *,
    config: Mapping[str, Any] | None = None,
    data_dir: Path | None = None,
    registry_url: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 300,
) -> Served:
    """Start ``aiscale serve ARGS`` on a free port (``--config`` from ``config`` when given)
    and wait until ``/v2/health/ready`` answers 200. Raises ``Missing`` when the command
    refuses the arguments or the config (the LLM path or a field is not there yet)."""
    folder = data_dir or Path(tempfile.mkdtemp(prefix="aiscale-llm-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    command = [*AISCALE, "serve", *args, "--port", "0", "--data-dir", str(folder)]
    if registry_url:
        command += ["--registry-url", registry_url]
    if config is not None:
        config_path = folder / "aiscale.yaml"
        config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        command += ["--config", str(config_path)]
    log = folder / "serve.log"
    started = time.perf_counter()
    full_env = {**os.environ, **(env or {})}
    with log.open("w") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                   cwd=ROOT, env=full_env)  # fmt: skip
    assert process.stdout is not None
    url = ""
    for line in process.stdout:
        found = re.search(r"serving on (http://\S+)", line)
        if found:
            url = found.group(1).rstrip("/.,")
            break
    served = Served(process, url, folder, log, started, dict(env or {}))
    if not url:
        process.wait(timeout=30)
        raise Missing(f"`aiscale serve {' '.join(args)}` did not start: {served.log_tail()}")
    # Keep reading its stdout so that a chatty server never blocks on a full pipe.
    _drain_in_background(process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Missing(f"`aiscale serve` exited while starting: {served.log_tail()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return served
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling readiness with a deadline
    served.stop()
    raise RuntimeError(f"aiscale serve not ready within {timeout_s} s: {served.log_tail()}")


def empty_kv_slots_env() -> dict[str, str]:
    """Environment for ``serve`` that gives the gateway's llama.cpp engines an empty KV slot
    folder of their own (``TMPDIR``: the node's folder is ``$TMPDIR/aiscale-kv-slots-UID``).
    Otherwise the gateway loads the prefixes that earlier runs saved when their engines
    drained, and restores them into a server meant to start cold (and, while any are
    there, renders each long chat prompt at the engine to look them up). Remove the folder
    (``shutil.rmtree(env["TMPDIR"])``) once the server has stopped."""
    return {"TMPDIR": tempfile.mkdtemp(prefix="aiscale-llm-bench-tmp-")}


def _drain_in_background(process: subprocess.Popen[str]) -> None:
    import threading

    def drain() -> None:
        assert process.stdout is not None
        for _ in process.stdout:
            pass

    threading.Thread(target=drain, daemon=True).start()


def stop_process(process: subprocess.Popen[str], timeout_s: float = 60) -> None:
    """SIGTERM (the server drains and stops its replicas), then SIGKILL past the timeout."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def llm_deployment(name: str = MODEL, *, replicas: int = 1, threads: int = 2,
                   parallel: int = 4, context_window: int = 2048, routing: str | None = None,
                   **engine: Any) -> dict[str, Any]:
    """One LLM deployment of the bundled model as the config's ``deployments`` entry."""
    spec: dict[str, Any] = {"kind": "llamacpp", "model": MODEL, "threads": threads,
                            "parallel": parallel, "context_window": context_window, **engine}
    if routing is not None:
        spec["routing"] = routing
    return {"name": name, "model": name, "replicas": replicas, "engine": spec}


# ---------------------------------------------------------------------- engines


def start_engine(*, threads: int = 2, parallel: int = 4, context_window: int = 2048,
                 name: str = MODEL) -> tuple[subprocess.Popen[str], str, float]:
    """A llama.cpp engine with exactly the settings and environment the gateway's
    ``LlamaCppBackend`` gives its replicas (its own ``settings()``), as a process of ours;
    returns the process, its base URL and its model load time (s)."""
    try:
        from aiscale.config import EngineConfig
        from aiscale.engines.llamacpp import ENGINE_OPENMP_SPIN_COUNT, LlamaCppBackend
        from aiscale.replicas.environment import replica_environment
    except ImportError as exc:
        raise Missing(f"the llama.cpp engine backend is not there yet: {exc}") from None
    spec = EngineConfig(model=MODEL, threads=threads, parallel=parallel,
                        context_window=context_window).to_spec(name)  # fmt: skip
    settings = LlamaCppBackend(spec).settings(threads)
    _, env = replica_environment("llamacpp", {}, threads)
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        env["GOMP_SPINCOUNT"] = str(ENGINE_OPENMP_SPIN_COUNT)
    process = subprocess.Popen(
        [sys.executable, "-m", "aiscale.engines.llamacpp_process", "--params",
         json.dumps(settings)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=env, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    report = json.loads(process.stdout.readline() or "{}")
    if "url" not in report:
        stop_engine(process)
        raise RuntimeError(f"the engine did not start: {report}")
    url = str(report["url"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url, float(report.get("load_s", 0.0))
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling readiness with a deadline
    stop_engine(process)
    raise RuntimeError("the engine did not become healthy within 120 s")


def stop_engine(process: subprocess.Popen[str]) -> None:
    """Close its stdin (its lifeline: it stops), then kill past 30 s."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _parents() -> dict[int, tuple[int, str]]:
    """Every process's parent id and command line (Linux ``/proc``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return found


def engine_children(pid: int) -> list[int]:
    """Process ids of the llama.cpp engine processes started by ``pid`` (Linux /proc)."""
    return sorted(child for child, (parent, cmdline) in _parents().items()
                  if parent == pid and "aiscale.engines.llamacpp_process" in cmdline)


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (Linux /proc): LiteLLM's proxy, for one, may run
    its server in a child process."""
    parents = _parents()
    found, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def listening_urls(pid: int) -> list[str]:
    """``http://127.0.0.1:PORT`` for every TCP port ``pid`` listens on (Linux /proc): how a
    benchmark finds a gateway's engine replica, which the gateway does not publish."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    urls = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, state, inode = parts[1], parts[3], parts[9]
        if state == "0A" and inode in inodes:  # 0A: LISTEN
            urls.append(f"http://127.0.0.1:{int(local.split(':')[1], 16)}")
    return sorted(urls)


def gateway_engine_urls(served: Served) -> list[str]:
    """The base URLs of the engine replicas of ``served`` (see ``listening_urls``). The
    gateway's own port is left out: an engine process that inherited the gateway's listening
    socket lists it too."""
    urls = [u for pid in engine_children(served.process.pid) for u in listening_urls(pid)
            if u != served.url]
    if not urls:
        raise Missing("cannot find the gateway's engine replica (no llama.cpp child process "
                      "listening under the aiscale serve process)")
    return urls


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------- metrics


def scrape(url: str, headers: Mapping[str, str] | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:  # noqa: E501
    """Every sample of ``url``'s ``/metrics``: ``(name, labels) -> value``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10, headers=dict(headers or {})).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def by_label(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str,
             label: str) -> dict[str, float]:
    """The samples of metric ``name`` summed by the value of ``label``."""
    out: dict[str, float] = {}
    for (sample_name, labels), value in samples.items():
        if sample_name == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def free_port() -> int:
    """A free loopback port, for third-party servers that cannot bind port 0 and report it
    (LiteLLM's proxy). Racy by nature; acceptable in a benchmark, never in a test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main_guard(run: Any, argv: Iterable[str] | None = None) -> None:
    """Run ``run()``; a ``Missing`` part is one line on stderr and exit status 2, a failed
    measurement (a server or a bench run that failed) one line and exit status 1. Either way
    RESULTS.md is left as it was."""
    try:
        run()
    except Missing as exc:
        print(f"cannot run this benchmark: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
