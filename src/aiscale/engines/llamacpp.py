"""LLM replicas as llama.cpp server processes (``xllamacpp``): the default engine on CPUs.

``LlamaCppBackend`` is a ``ReplicaBackend``: ``spawn`` starts ``python -m
aiscale.engines.llamacpp_process`` with the replica environment (the same allow-list as
model replicas, plus the GPU lease's variables), reads the port the engine bound on
127.0.0.1, and returns once ``/health`` answers 200. The engine serves the OpenAI routes
itself; the gateway's LLM path sends requests to ``EngineHandle.url``. ``send`` is not
used: engines are not fed batches. ``stop`` drains (waits until the engine reports no
request processing or deferred), then ends it; ``wait_dead`` reports its exit.

Engine settings (``EngineSpec``): each of the ``parallel`` slots holds a whole
``context_window`` (llama.cpp's n_ctx is their sum), continuous batching and the prompt
cache are on, ``/metrics`` and ``/slots`` (with a save path, for KV save and restore) are on;
``/slots`` also shows each slot's text (``LLAMA_SERVER_SLOTS_DEBUG``), which is how
``llm/kv_store.py`` knows which conversation a slot holds. A model given as an
object-store URI is fetched into the node's weights cache (``engines/weights.py``) by the
first replica that starts, and loaded from there by all of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiscale.engines.models import is_object_uri
from aiscale.engines.process import (
    EngineHandle,
    EngineProcess,
    batches_refused,
    stop_drained,
    wait_healthy,
)
from aiscale.engines.spec import EngineSpec
from aiscale.engines.weights import WeightsCache
from aiscale.errors import ModelLoadError
from aiscale.replicas.backend import ReplicaInfo, ReplicaLease
from aiscale.replicas.environment import replica_environment
from aiscale.replicas.ipc import BatchReply

__all__ = ["DrainHook", "LlamaCppBackend", "slot_save_dir_of"]

#: Called with an engine once it has drained and before it is stopped (KV save).
DrainHook = Callable[[EngineHandle], Awaitable[object]]

#: HTTP worker threads of an engine, at least. llama.cpp's HTTP server holds one thread per
#: open connection (kept alive between requests), and its default (cores - 1, or slots + 2)
#: would let a gateway's connection pool starve it; threads blocked on a socket are cheap.
MIN_HTTP_THREADS = 64
#: libgomp busy-wait iterations at a barrier before a thread sleeps, for engines (model
#: replicas get 10,000: ``replicas/environment.py``). ggml meets at an OpenMP barrier after
#: almost every operation, hundreds of times per token, so a thread preempted by the
#: gateway or a client stalls its peer's spin on every one of them. Informal runs on the
#: shared 2-core machine (load ~8; not results): 2 threads decoded one stream at ~2-5
#: tokens/s with 10,000 and ~10-17 with 0-300. An operator's OMP_WAIT_POLICY or
#: GOMP_SPINCOUNT wins. TODO(#15): the LLM benchmark compares 300 and 10,000 on a quiet box.
ENGINE_OPENMP_SPIN_COUNT = 300


class LlamaCppBackend:
    """llama.cpp engine processes on this machine for one LLM deployment (a ``ReplicaBackend``)."""

    def __init__(self, spec: EngineSpec, *, on_drained: DrainHook | None = None) -> None:
        """``on_drained``: awaited with each engine that ``stop`` has drained, before it is
        ended (within the stop's deadline; its failure is logged, the stop goes on): where
        ``aiscale.llm.kv_store.KvStore.save_engine`` keeps the engine's conversations."""
        if spec.kind != "llamacpp":
            raise ValueError(f"LlamaCppBackend runs llamacpp engines, not {spec.kind!r}")
        self.spec = spec
        self._slot_save_dir: str | None = spec.slot_save_dir
        self._on_drained = on_drained

    @property
    def slot_save_dir(self) -> str:
        """The folder every replica saves and restores slots' KV cache in (the one a
        ``KvStore`` of this deployment keeps its files in: restore is a file hand-over)."""
        return self._slot_dir()

    def settings(self, num_threads: int, *, model_path: str | None = None) -> dict[str, Any]:
        """The engine process's settings (``llamacpp_process.build_params``); ``model_path``:
        the local file of an object-store model (from the node's weights cache)."""
        spec = self.spec
        return {
            "model": model_path or spec.model,
            "alias": spec.served_model_name,
            "n_ctx": spec.total_context_tokens,
            "n_parallel": spec.parallel,
            "n_threads": num_threads,
            "n_predict": spec.max_output_tokens,
            "n_threads_http": max(MIN_HTTP_THREADS, 8 * spec.parallel),
            # llama.cpp appends the file name to this path as it is: it must end in "/".
            "slot_save_path": os.path.join(self._slot_dir(), ""),
            "extra": dict(spec.extra_args),
            "batch_scheduling": spec.batch_scheduling,
        }

    async def spawn(
        self, replica_id: int, *, num_replicas: int, lease: ReplicaLease | None
    ) -> tuple[EngineHandle, ReplicaInfo]:
        """Start one engine and return once its ``/health`` answers 200.

        ``ModelLoadError`` names the cause (the engine's own error lines) when the model does
        not load, the engine exits, or it is not healthy within ``startup_timeout_s``; nothing
        of the attempt is left running.
        """
        spec = self.spec
        model = await self._local_model()
        # Unless the spec says, the replicas share the machine's cores evenly.
        num_threads = spec.threads or max(1, (os.cpu_count() or 1) // max(1, num_replicas))
        _, env = replica_environment("llamacpp", {}, num_threads)
        if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
            env["GOMP_SPINCOUNT"] = str(ENGINE_OPENMP_SPIN_COUNT)
        # /slots shows each slot's prompt and generated text (loopback only, like the rest
        # of the engine): the KV store maps a conversation to its slot by it.
        env["LLAMA_SERVER_SLOTS_DEBUG"] = "1"
        if lease is not None:
            env.update(lease.env)
        deadline = time.monotonic() + spec.startup_timeout_s
        engine = await EngineProcess.start(
            [
                sys.executable,
                "-m",
                "aiscale.engines.llamacpp_process",
                "--params",
                json.dumps(self.settings(num_threads, model_path=model)),
            ],
            env=env,
            replica_id=replica_id,
            label="llamacpp",
        )
        try:
            report = _parse_report(await engine.ready_line(deadline))
            if "error" in report:
                await engine.wait()
                # The engine's own error lines name the cause; its exception only says
                # that it failed.
                raise ModelLoadError(
                    f"llama.cpp could not load {spec.model}"
                    f"{engine.last_errors() or ': ' + str(report['error'])}"
                )
            url = str(report["url"])
            if not url.startswith("http://127.0.0.1:"):
                raise ModelLoadError(f"llama.cpp engine bound {url}, not loopback")
            await wait_healthy(engine, f"{url}/health", deadline)
        except BaseException:  # failed, timed out or cancelled: leave nothing running
            await asyncio.shield(engine.kill())
            raise
        handle = EngineHandle(replica_id, url, engine.pid, spec.served_model_name, {}, engine)
        info = ReplicaInfo(engine.pid, "local", spec.schema(), float(report["load_s"]))
        return handle, info

    def send(
        self, handle: EngineHandle, items: list[Any], trace_context: str | None = None
    ) -> asyncio.Future[BatchReply]:
        """Engines are not fed batches: the gateway's LLM path calls ``handle.url``."""
        raise batches_refused(handle)

    async def stop(self, handle: EngineHandle, timeout_s: float) -> None:
        """Drain (until the engine reports no request processing or deferred), then end it;
        killed at ``timeout_s``. Safe on an engine that has already ended."""
        hook = self._on_drained
        on_idle = None if hook is None else (lambda: hook(handle))
        await stop_drained(handle, timeout_s, "llamacpp", on_idle=on_idle)

    async def wait_dead(self, handle: EngineHandle) -> str:
        """Return once the engine has ended, with the cause in words."""
        engine = _process_of(handle)
        return engine.describe_exit(await engine.wait())

    async def _local_model(self) -> str:
        """The model file this replica loads: the spec's, or for an object-store URI the
        node cache's copy (fetched by whichever replica on this node asks first)."""
        spec = self.spec
        model = spec.model
        if is_object_uri(model):
            cache = WeightsCache(spec.model_cache_dir, options=spec.object_store)
            cached = await asyncio.to_thread(cache.fetch, model, sha256=spec.model_sha256)
            model = str(cached.path)
        if not Path(model).is_file():
            raise ModelLoadError(f"model file {model!r} does not exist")
        return model

    def _slot_dir(self) -> str:
        if self._slot_save_dir is None:
            self._slot_save_dir = slot_save_dir_of(self.spec)
        return self._slot_save_dir


def slot_save_dir_of(spec: EngineSpec) -> str:
    """Where the engines of ``spec`` save slots' KV cache: the spec's folder, else a private
    one per model under the temporary folder, the same for every replica and every run (a
    slot saved by one replica can be restored by another; nothing piles up). Known before
    any backend exists, so a ``KvStore`` can be made first and be the backend's drain hook."""
    if spec.slot_save_dir is not None:
        return spec.slot_save_dir
    return str(_private_slot_dir(spec.model))


def _process_of(handle: EngineHandle) -> EngineProcess:
    if handle.process is None:
        raise ValueError(f"engine replica {handle.replica_id} is not a process of this backend")
    return handle.process


def _private_slot_dir(model: str) -> Path:
    """``$TMPDIR/aiscale-kv-slots-<uid>/<digest of the model path>``, mode 0700. The parent
    must be a real folder of ours (not a link another user planted in the shared /tmp)."""
    root = Path(tempfile.gettempdir()) / f"aiscale-kv-slots-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    status = root.lstat()
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
        raise ModelLoadError(f"{root} is not a folder of this user; remove it")
    folder = root / hashlib.sha256(model.encode()).hexdigest()[:16]
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _parse_report(line: str) -> dict[str, Any]:
    """The engine's report: ``{"url", "load_s", "pid"}`` or ``{"error"}``."""
    try:
        report = json.loads(line)
    except json.JSONDecodeError:
        report = None
    if isinstance(report, dict) and ({"url", "load_s"} <= report.keys() or "error" in report):
        return report
    raise ModelLoadError(f"llama.cpp engine sent {line[:200]!r} instead of its report")
