"""A stand-in for vLLM's OpenAI server (``vllm.entrypoints.openai.api_server``), for testing
how ``VllmBackend`` wires the process where vLLM cannot run (no GPU, vLLM not installed).

It takes the arguments ``VllmBackend`` passes, refusing any that vLLM's server does not
accept; refuses a model folder without ``config.json`` the way vLLM fails a load (an error
line, exit 1); serves on the given host and port through uvicorn (whose start line names the
port the kernel picked) ``/health``, ``/v1/models``, ``/metrics`` in ``vllm:*`` terms and a
chat completion that takes ``delay_s`` per request. It is not vLLM: only the process
contract (arguments, port, readiness, drain, exit) is tested through it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

#: vLLM server flags this stand-in knows (VllmBackend must pass nothing else).
FLAGS_WITH_VALUE = {
    "--model", "--served-model-name", "--host", "--port", "--max-model-len", "--max-num-seqs",
    "--tensor-parallel-size", "--gpu-memory-utilization", "--dtype",
}  # fmt: skip
BOOLEAN_FLAGS = {"--enable-prefix-caching", "--enforce-eager", "--no-enforce-eager"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for flag in FLAGS_WITH_VALUE:
        parser.add_argument(flag)
    for flag in BOOLEAN_FLAGS:
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--standin-delay-s", type=float, default=0.5)
    return parser.parse_args(argv)


def main() -> None:
    args = parse(sys.argv[1:])
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="INFO %(message)s")
    if not (Path(args.model) / "config.json").is_file():
        print(f"ERROR ValueError: {args.model} has no config.json; not a model folder", flush=True)
        sys.exit(1)
    running = [0]

    async def health(_: Request) -> PlainTextResponse:
        return PlainTextResponse("")

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": args.served_model_name}]})

    async def metrics(_: Request) -> PlainTextResponse:
        return PlainTextResponse(
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{engine=\"0\"}} {running[0]}\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            "vllm:num_requests_waiting{engine=\"0\"} 0\n"
        )

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        running[0] += 1
        try:
            await asyncio.sleep(args.standin_delay_s)
        finally:
            running[0] -= 1
        return JSONResponse({
            "object": "chat.completion",
            "model": args.served_model_name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "stand-in"}}],
            "usage": {"prompt_tokens": len(str(body["messages"])), "completion_tokens": 2},
            "prefix_caching": args.enable_prefix_caching,
            "max_model_len": int(args.max_model_len),
            "max_num_seqs": int(args.max_num_seqs),
        })

    app = Starlette(routes=[
        Route("/health", health), Route("/v1/models", models), Route("/metrics", metrics),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ])  # fmt: skip
    uvicorn.run(app, host=args.host, port=int(args.port), log_level="info")


if __name__ == "__main__":
    main()
