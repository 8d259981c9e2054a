"""The vLLM engine process: vLLM's own OpenAI server, with the gateway's lifeline.

Started by ``VllmBackend`` (``vllm.py``) as ``python -m aiscale.engines.vllm_process
[--entrypoint MODULE] -- <server arguments>``. It runs ``MODULE`` (vLLM's
``vllm.entrypoints.openai.api_server``) as ``__main__`` in this process, after starting one
thread that watches stdin: when the gateway exits, even killed, the pipe closes and this
thread ends the whole session (vLLM's server and the engine-core processes it started),
first with SIGTERM, then with SIGKILL. vLLM has no such lifeline of its own.

This module never imports vLLM itself and never decides anything about requests.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Sequence

#: vLLM's OpenAI-compatible server module.
VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
#: After the lifeline closes: how long the session is given to exit after SIGTERM.
TERM_GRACE_S = 10.0


def _end_session_when_stdin_closes() -> None:
    while sys.stdin.buffer.read(4096):
        pass
    os.killpg(0, signal.SIGTERM)
    time.sleep(TERM_GRACE_S)
    os.killpg(0, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aiscale vLLM engine (the gateway starts it)")
    parser.add_argument("--entrypoint", default=VLLM_ENTRYPOINT, help="server module to run")
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="-- then its arguments")
    args = parser.parse_args(argv)
    server_args = list(args.server_args)
    if server_args[:1] == ["--"]:
        server_args = server_args[1:]
    # The gateway owns shutdown and drains first; a Ctrl-C in its terminal does not reach
    # this session (started with a session of its own).
    threading.Thread(target=_end_session_when_stdin_closes, daemon=True).start()
    sys.argv = [args.entrypoint, *server_args]
    runpy.run_module(args.entrypoint, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    # A process entry point like cli.py: the exit status tells the gateway how it ended.
    sys.exit(main())
