"""The llama.cpp engine process: llama.cpp's own HTTP server, through ``xllamacpp``.

Started by ``LlamaCppBackend`` (``llamacpp.py``) as ``python -m aiscale.engines.llamacpp_process
--params JSON``. ``xllamacpp.Server`` loads the model and serves llama.cpp's server (continuous
batching over parallel slots, prompt cache, ``/metrics``, ``/slots`` save and restore, the
OpenAI routes) from its own threads, bound to 127.0.0.1 on a port the kernel picks (port 0),
so the port belongs to this process from the moment it exists. This process then reports
``{"url", "load_s", "pid"}`` (or ``{"error"}``) as one line on its stdout and waits for its
stdin to close: the gateway's lifeline. SIGTERM ends it too.

This module never decides anything about requests; it runs the engine and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

#: Engine log threshold: 0 output, 1 errors, 2 warnings, 3 info (per-request lines), 4 debug.
#: Warnings keep the gateway's log readable; errors name a failed load's cause.
LOG_VERBOSITY = 2


def build_params(settings: Mapping[str, Any]) -> Any:
    """``xllamacpp.CommonParams`` from the backend's settings (see ``LlamaCppBackend``)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = settings["model"]
    params.model_alias = {settings["alias"]}
    # Loopback only, on a port of the kernel's choosing: nothing else can take it from us.
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    # n_ctx is the KV cache of all slots; each slot holds n_ctx / n_parallel tokens (the
    # KV cache is split per slot unless kv_unified).
    params.n_ctx = settings["n_ctx"]
    params.n_parallel = settings["n_parallel"]
    params.kv_unified = False
    params.cont_batching = True
    params.cache_prompt = True
    params.cpuparams.n_threads = settings["n_threads"]
    params.cpuparams_batch.n_threads = settings["n_threads"]
    # A server-wide cap: a request asking for more (or for no limit) is cut here too.
    params.n_predict = settings["n_predict"]
    params.n_threads_http = settings["n_threads_http"]
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.slot_save_path = settings["slot_save_path"]
    params.ui = False
    # Browsers may read answers only from the engine's own origin: a web page the operator
    # opens cannot call the engine behind the gateway's back (llama.cpp allows any by default).
    params.cors_origins = "http://127.0.0.1"
    params.cors_origins_explicit = True
    params.verbosity = LOG_VERBOSITY
    for name, value in settings.get("extra", {}).items():
        setattr(params, name, value)
    return params


def yield_cpu_to_latency_bound_work() -> bool:
    """Mark this process (and the threads it starts after this call) as batch work:
    Linux's ``SCHED_BATCH``, the policy the kernel documents for CPU-bound, non-interactive
    work. A waking gateway (or a client, or another replica's event loop) then preempts
    the engine's decode threads at once instead of waiting out their time slice. On a node
    whose cores the engine's threads fill, that wait sat on every hop a token takes through
    the gateway: on the 2-core machine TTFT p50 through the gateway was +4.5 to +7.6 ms over
    the engine called directly with the default policy and +1.3 to +1.6 ms with this one
    (40 sequential requests each, interleaved, a quiet machine). The gateway's share of the
    CPU is the same, only when it gets it changes; the engine's own throughput, policies
    alternated on one engine, was not told apart from run-to-run noise (c=16: 27.2 and 16.7
    output tokens/s with the default policy, 22.1 and 19.8 with this one). ``False`` where
    the platform has no such policy."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:
        return False
    return True


def _exit_on_term(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aiscale llama.cpp engine (the gateway starts it)")
    parser.add_argument("--params", required=True, help="the engine settings as JSON")
    args = parser.parse_args(argv)
    settings = json.loads(args.params)
    # The gateway owns shutdown: it drains this engine, then closes the lifeline or sends
    # SIGTERM. (A Ctrl-C in the terminal does not reach this session at all.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    # stdout carries the one report line; anything else written to fd 1 (by the engine's C++
    # code or a library) goes to stderr, the log, so it cannot corrupt the report.
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    if settings.get("batch_scheduling", True):
        yield_cpu_to_latency_bound_work()  # before xllamacpp starts its threads: they inherit it
    started = time.monotonic()
    try:
        import xllamacpp

        server = xllamacpp.Server(build_params(settings))
    except Exception as exc:  # the load boundary: report what failed, then exit
        report.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        report.close()
        return 1
    report.write(
        json.dumps(
            {
                "url": server.listening_address,
                "load_s": time.monotonic() - started,
                "pid": os.getpid(),
            }
        )
        + "\n"
    )
    report.close()
    try:
        # Serve (from the engine's own threads) until the gateway closes our stdin: when it
        # exits, even killed, the pipe closes and this engine ends with it.
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        del server  # stops the HTTP server and the engine loop before the process exits
    return 0


if __name__ == "__main__":
    # A process entry point like cli.py: the exit status tells the gateway how it ended.
    sys.exit(main())
