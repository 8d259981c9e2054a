"""LLM replicas as vLLM OpenAI-server processes: the engine on GPUs.

``VllmBackend`` is a ``ReplicaBackend`` like ``LlamaCppBackend``: ``spawn`` starts vLLM's
OpenAI server (``python -m aiscale.engines.vllm_process -- --model ...``, which runs
``vllm.entrypoints.openai.api_server`` with a lifeline) on 127.0.0.1, port 0, with prefix
caching on, on the devices of the replica's GPU lease (``CUDA_VISIBLE_DEVICES``; tensor
parallel over them when there are several). The port the kernel picked is read from the
server's start line; ``spawn`` returns once ``/health`` answers 200. ``stop`` drains on
vLLM's own ``vllm:num_requests_running``/``waiting``, then ends the engine's whole session
(its engine-core processes too). Nothing here imports vLLM.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiscale.engines.process import (
    EngineHandle,
    EngineProcess,
    batches_refused,
    stop_drained,
    wait_healthy,
)
from aiscale.engines.spec import EngineSpec, ExtraArg
from aiscale.errors import ModelLoadError
from aiscale.replicas.backend import ReplicaInfo, ReplicaLease
from aiscale.replicas.environment import replica_environment
from aiscale.replicas.ipc import BatchReply

__all__ = ["VllmBackend", "vllm_arguments"]

#: uvicorn's start line, which names the port the kernel picked for ``--port 0`` (vLLM's
#: own "Starting vLLM API server on ..." line repeats the 0 it was given).
READY_LINE = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:(?!0\b)\d+)")


def vllm_arguments(spec: EngineSpec, *, num_devices: int = 1) -> list[str]:
    """vLLM server arguments for ``spec``: the model, its served name, loopback port 0,
    prefix caching, the context window as ``--max-model-len``, the slots as
    ``--max-num-seqs``, tensor parallel over ``num_devices``, then the extra args
    (``name=True`` is ``--name``, ``False`` is ``--no-name``)."""
    arguments = [
        "--model", spec.model,
        "--served-model-name", spec.served_model_name,
        "--host", "127.0.0.1",
        "--port", "0",
        "--enable-prefix-caching",
        "--max-model-len", str(spec.context_window),
        "--max-num-seqs", str(spec.parallel),
    ]  # fmt: skip
    extra: dict[str, ExtraArg] = dict(spec.extra_args)
    if num_devices > 1:
        extra.setdefault("tensor_parallel_size", num_devices)
    for name, value in extra.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            arguments.append(flag)
        elif value is False:
            arguments.append("--no-" + flag[2:])
        else:
            arguments += [flag, str(value)]
    return arguments


def _num_devices(env: Mapping[str, str]) -> int:
    devices = env.get("CUDA_VISIBLE_DEVICES", "")
    return len([d for d in devices.split(",") if d.strip()]) or 1


class VllmBackend:
    """vLLM engine processes on this machine for one LLM deployment (a ``ReplicaBackend``).

    ``entrypoint`` is the server module the engine process runs: vLLM's by default.
    """

    def __init__(self, spec: EngineSpec, *, entrypoint: str | None = None) -> None:
        if spec.kind != "vllm":
            raise ValueError(f"VllmBackend runs vllm engines, not {spec.kind!r}")
        self.spec = spec
        self._entrypoint = entrypoint

    async def spawn(
        self, replica_id: int, *, num_replicas: int, lease: ReplicaLease | None
    ) -> tuple[EngineHandle, ReplicaInfo]:
        """Start one vLLM server and return once its ``/health`` answers 200;
        ``ModelLoadError`` with the server's own error lines otherwise (nothing is left
        running). ``ReplicaInfo.load_s`` is the time from start to healthy."""
        spec = self.spec
        if not Path(spec.model).exists():
            raise ModelLoadError(f"model {spec.model!r} does not exist")
        _, env = replica_environment("vllm", {}, spec.threads or 1)
        if lease is not None:
            env.update(lease.env)
        entrypoint = ["--entrypoint", self._entrypoint] if self._entrypoint else []
        argv = [
            sys.executable, "-m", "aiscale.engines.vllm_process", *entrypoint, "--",
            *vllm_arguments(spec, num_devices=_num_devices(env)),
        ]  # fmt: skip
        started = time.monotonic()
        deadline = started + spec.startup_timeout_s
        engine = await EngineProcess.start(
            argv, env=env, replica_id=replica_id, label="vllm", ready_pattern=READY_LINE
        )
        try:
            url = (await engine.announced(deadline)).group(1)
            await wait_healthy(engine, f"{url}/health", deadline)
        except BaseException:  # failed, timed out or cancelled: leave nothing running
            await asyncio.shield(engine.kill())
            raise
        handle = EngineHandle(replica_id, url, engine.pid, spec.served_model_name, {}, engine)
        load_s = time.monotonic() - started
        return handle, ReplicaInfo(engine.pid, "local", spec.schema(), load_s)

    def send(
        self, handle: EngineHandle, items: list[Any], trace_context: str | None = None
    ) -> asyncio.Future[BatchReply]:
        """Engines are not fed batches: the gateway's LLM path calls ``handle.url``."""
        raise batches_refused(handle)

    async def stop(self, handle: EngineHandle, timeout_s: float) -> None:
        """Drain on vLLM's request gauges, then end the engine's session; killed at
        ``timeout_s``. Safe on an engine that has already ended."""
        await stop_drained(handle, timeout_s, "vllm")

    async def wait_dead(self, handle: EngineHandle) -> str:
        """Return once the server has ended, with the cause in words."""
        if handle.process is None:
            raise ValueError(f"engine replica {handle.replica_id} is not a vLLM process")
        return handle.process.describe_exit(await handle.process.wait())
