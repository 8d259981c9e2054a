"""An engine replica's process and its handle: start, readiness, drain, stop, exit cause.

Shared by the two engines that run as processes on this machine (``llamacpp.py``,
``vllm.py``). Each engine process runs in a session of its own, so that a Ctrl-C in the
gateway's terminal never reaches it (the gateway owns shutdown and drains it first) and so
that stopping it also ends any process it started (vLLM's engine core). It holds the read
end of a pipe on its stdin as a lifeline: when the gateway exits, even by ``kill -9``, the
pipe closes and the engine ends itself, so no engine outlives its gateway.

The engine's own log (stderr) is forwarded line by line to this module's logger, and its
last lines are kept to name the cause when the engine fails to load or dies. Nothing here
decides status codes or retries anything: the pool does.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from aiscale.errors import AiscaleError, ModelLoadError

__all__ = [
    "EngineHandle", "EngineProcess", "batches_refused", "stop_drained", "wait_healthy"
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Lines of the engine's log kept to explain a failed load or an exit.
TAIL_LINES = 40
#: How often readiness and drain are polled (seconds).
POLL_INTERVAL_S = 0.05
#: Of a stop's deadline, at least this much is left for the engine to exit by itself after
#: SIGTERM, before it is killed (seconds; less when the whole deadline is shorter).
EXIT_GRACE_S = 3.0
#: How long the log reader may run on after the engine exited (a child of it may hold the
#: pipe open); then it is cancelled.
LOG_DRAIN_S = 1.0
#: One HTTP probe (health, metrics) of an engine on loopback.
PROBE_TIMEOUT = httpx.Timeout(2.0)


@dataclass(slots=True, eq=False)
class EngineHandle:
    """One engine replica as the gateway's LLM path sees it.

    ``url`` is the base URL (``http://127.0.0.1:PORT`` for a local engine, on a port that
    replica owns; the upstream's base URL for ``openai-upstream``): it is the replica's
    identity, the same in every gateway. ``model_name`` is what to send as the body's
    ``model`` (llama.cpp and vLLM answer to the served name; an upstream to its own name).
    ``headers`` go with every request to it (an upstream's ``Authorization``; empty for
    local engines). ``process`` is ``None`` for endpoints aiscale does not run.
    """

    replica_id: int
    url: str
    pid: int
    model_name: str
    #: Never in ``repr``: an upstream's carries its API key.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    process: EngineProcess | None = None


class EngineProcess:
    """A started engine process: its log reader, its lifeline and how it ends."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        replica_id: int,
        label: str,
        ready_pattern: re.Pattern[str] | None,
    ) -> None:
        self.process = process
        self.replica_id = replica_id
        self.label = label
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        #: Resolved with the first log line matching ``ready_pattern`` (vLLM announces its
        #: port in its log); unused when the engine reports on stdout.
        self.log_match: asyncio.Future[re.Match[str]] = (
            asyncio.get_running_loop().create_future()
        )
        self._ready_pattern = ready_pattern
        log_stream = process.stderr if process.stderr is not None else process.stdout
        assert log_stream is not None
        self._log_task = asyncio.create_task(
            self._read_log(log_stream), name=f"{label}-{replica_id}-log"
        )

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        replica_id: int,
        label: str,
        ready_pattern: re.Pattern[str] | None = None,
    ) -> EngineProcess:
        """Start ``argv`` in a new session with a stdin lifeline. Without ``ready_pattern``
        the engine reports readiness as one line on stdout (``ready_line``) and logs on
        stderr; with it, stdout and stderr are one log, searched for the pattern."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if ready_pattern else asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return cls(process, replica_id, label, ready_pattern)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    # ----- readiness -----------------------------------------------------------------
    async def ready_line(self, deadline: float) -> str:
        """The engine's one-line readiness report on stdout; ``ModelLoadError`` naming the
        cause if it exits first or stays silent past ``deadline`` (``time.monotonic``)."""
        assert self.process.stdout is not None
        line = await self._before_exit(self.process.stdout.readline(), deadline, "report")
        if not line:  # stdout closed: the engine exited (or is exiting) without a report
            code = await self._exit_code(deadline)
            raise ModelLoadError(self.describe_exit(code, during="while loading"))
        return line.decode(errors="replace").strip()

    async def announced(self, deadline: float) -> re.Match[str]:
        """The first log line matching the ready pattern (``ModelLoadError`` as above)."""
        return await self._before_exit(asyncio.shield(self.log_match), deadline, "announce")

    async def _before_exit(self, awaitable: Awaitable[T], deadline: float, what: str) -> T:
        waiter = asyncio.ensure_future(awaitable)
        exited = asyncio.ensure_future(self.process.wait())
        try:
            await asyncio.wait(
                {waiter, exited},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            exited.cancel()
        if waiter.done():
            return waiter.result()
        waiter.cancel()
        if self.returncode is not None:
            await self._finish_log()
            raise ModelLoadError(self.describe_exit(self.returncode, during="while loading"))
        raise ModelLoadError(
            f"{self.label} replica {self.replica_id} (pid {self.pid}) did not {what} ready "
            f"in time{self.last_errors()}"
        )

    async def _exit_code(self, deadline: float) -> int | None:
        try:
            code = await asyncio.wait_for(
                self.process.wait(), max(0.5, deadline - time.monotonic())
            )
        except TimeoutError:
            return None
        await self._finish_log()
        return code

    # ----- ending --------------------------------------------------------------------
    async def stop(
        self,
        timeout_s: float,
        is_idle: Callable[[], Awaitable[bool]],
        on_idle: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Drain, then end the engine within ``timeout_s``: wait until ``is_idle`` says it
        holds no request (leaving part of the deadline for the exit), then close its
        lifeline and send SIGTERM, and kill it (and its session) at the deadline. Safe on
        an engine that has already ended, and when called more than once.

        ``on_idle`` runs once the engine is idle and still running, before it is ended
        (saving its KV cache), bounded by what is left of the deadline before the exit's
        grace; its failure or timeout is logged and the stop goes on."""
        deadline = time.monotonic() + timeout_s
        if self.returncode is None:
            grace_s = min(EXIT_GRACE_S, timeout_s / 2)
            is_drained = False
            while time.monotonic() < deadline - grace_s and self.returncode is None:
                if await is_idle():
                    is_drained = True
                    break
                await asyncio.sleep(POLL_INTERVAL_S)
            if on_idle is not None and is_drained and self.returncode is None:
                await self._run_before_exit(on_idle, deadline - grace_s)
            self.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass
        # Kill what is left: the engine past its deadline, or processes it started that
        # outlived it (an engine killed with -9 cannot end its own children).
        self._signal_session(signal.SIGKILL)
        await self.process.wait()
        await self._finish_log()

    async def _run_before_exit(
        self, work: Callable[[], Awaitable[object]], deadline: float
    ) -> None:
        try:
            await asyncio.wait_for(work(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            logger.warning(
                "%s replica %d: its drain hook did not finish before the stop's deadline",
                self.label, self.replica_id,
            )
        except Exception:  # a task boundary: the engine must still be stopped
            logger.exception("%s replica %d: its drain hook failed", self.label, self.replica_id)

    def terminate(self) -> None:
        """Close the lifeline and ask the engine to exit (SIGTERM to its session)."""
        self._close_lifeline()
        self._signal_session(signal.SIGTERM)

    async def kill(self) -> None:
        """End the engine and its session at once, and reap it (a failed start's cleanup)."""
        self._close_lifeline()
        self._signal_session(signal.SIGKILL)
        await self.process.wait()
        await self._finish_log()

    async def wait(self) -> int:
        """The engine's exit code once it has ended (its log read to the end)."""
        code = await self.process.wait()
        await self._finish_log()
        return code

    def _close_lifeline(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()

    def describe_exit(self, code: int | None, *, during: str = "") -> str:
        """The cause in words, e.g. ``llamacpp replica 3 (pid 41) exited with code -9``,
        with the engine's error lines when it did not end cleanly."""
        how = "did not exit" if code is None else f"exited with code {code}"
        where = f" {during}" if during else ""
        errors = "" if code == 0 and not during else self.last_errors()
        return f"{self.label} replica {self.replica_id} (pid {self.pid}) {how}{where}{errors}"

    def _signal_session(self, signum: int) -> None:
        try:
            # The engine leads its own session and process group (start_new_session).
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # the whole group has ended already

    # ----- log -----------------------------------------------------------------------
    async def _read_log(self, stream: asyncio.StreamReader) -> None:
        prefix = f"{self.label} replica {self.replica_id}:"
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the reader's limit: skip it
                continue
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            self.tail.append(line)
            logger.info("%s %s", prefix, line)
            if self._ready_pattern is not None and not self.log_match.done():
                found = self._ready_pattern.search(line)
                if found is not None:
                    self.log_match.set_result(found)

    async def _finish_log(self) -> None:
        """Once the engine has ended: close its lifeline and let the log reader take its
        last lines, bounded: a process the engine started may still hold the pipe open."""
        self._close_lifeline()
        if not self._log_task.done():
            done, _ = await asyncio.wait({self._log_task}, timeout=LOG_DRAIN_S)
            if not done:
                self._log_task.cancel()
                await asyncio.gather(self._log_task, return_exceptions=True)
        if not self.log_match.done():
            self.log_match.cancel()

    def last_errors(self) -> str:
        """The engine's first and last error lines (the root cause usually comes first, the
        consequence last), else its last lines, as a suffix for a message; ``""`` if it
        logged nothing."""
        lines = [_LOG_PREFIX.sub("", line).strip() for line in self.tail]
        errors = [line for line, raw in zip(lines, self.tail, strict=True) if _is_error(raw)]
        if errors:
            chosen = list(dict.fromkeys([errors[0], errors[-1]]))
        else:
            chosen = lines[-2:]
        return (": " + " | ".join(chosen)) if chosen else ""


#: llama.cpp's log prefix: elapsed time and level (``0.00.006.857 E ``).
_LOG_PREFIX = re.compile(r"^\d+\.\d+\.\d+\.\d+ [A-Z] ")
#: An error line: llama.cpp's level ``E``, Python's logging level or a traceback.
_ERROR_LINE = re.compile(r"^\d+\.\d+\.\d+\.\d+ E |\bERROR\b|Traceback|Error:")


def _is_error(line: str) -> bool:
    return _ERROR_LINE.search(line) is not None


def batches_refused(handle: EngineHandle) -> AiscaleError:
    """The error of ``ReplicaBackend.send`` on an engine: engines take HTTP requests at
    their URL (through the gateway's LLM path), never batches from the pool."""
    return AiscaleError(
        f"engine replica {handle.replica_id} takes HTTP requests at {handle.url}, not "
        "batches: route LLM requests through aiscale.serving.llm"
    )


async def stop_drained(
    handle: EngineHandle,
    timeout_s: float,
    kind: str,
    *,
    on_idle: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """``EngineProcess.stop`` with the engine's own metrics as the drain signal: idle once
    it reports no request running or waiting (or cannot answer at all), which counts the
    requests of every gateway, not only this one's. ``on_idle``: see ``EngineProcess.stop``."""
    if handle.process is None:
        raise ValueError(f"engine replica {handle.replica_id} is not a process aiscale runs")
    from aiscale.engines.metrics import parse_engine_metrics

    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, headers=dict(handle.headers)) as client:

        async def is_idle() -> bool:
            try:
                response = await client.get(f"{handle.url}/metrics")
                metrics = parse_engine_metrics(response.text, kind)
            except (httpx.HTTPError, AiscaleError):
                return True  # it cannot answer: nothing left to wait for
            return metrics.num_running == 0 and metrics.num_waiting == 0

        await handle.process.stop(timeout_s, is_idle, on_idle)


async def wait_healthy(
    engine: EngineProcess, url: str, deadline: float, *, headers: Mapping[str, str] | None = None
) -> None:
    """Poll ``GET url`` until it answers 200; ``ModelLoadError`` naming the cause if the
    engine exits first or ``deadline`` (``time.monotonic``) passes. Readiness is a polled
    endpoint with a deadline, never a sleep."""
    last = "no answer"
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, headers=dict(headers or {})) as client:
        while time.monotonic() < deadline:
            if engine.returncode is not None:
                code = await engine.wait()
                raise ModelLoadError(engine.describe_exit(code, during="while loading"))
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(POLL_INTERVAL_S)
    raise ModelLoadError(
        f"{engine.label} replica {engine.replica_id} (pid {engine.pid}) was not healthy at "
        f"{url} in time (last answer: {last})"
    )

