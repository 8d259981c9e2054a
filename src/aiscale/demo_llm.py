"""``aiscale demo --llm``: serve the bundled SmolLM2 on llama.cpp and let simulated users chat.

``run_llm_demo`` serves ``smollm2`` (one llama.cpp replica, 4 slots) in a data dir (a temporary
one by default) on 127.0.0.1, measures the cold start (launch to the first streamed token),
shows the live dashboard (whose LLM panel draws TTFT, ITL, tokens/s and the prefix-cache hit
rate from ``/metrics``), then runs simulated users in stages of 1 → 4 → ``max_users``
(``demo.stage_users``): each user holds multi-turn conversations that resend their history
(so the engine's prefix cache is used) and streams every answer, with think time between
turns, through ``aiscale.bench.run_chat_bench``. A rich progress bar shows each stage live;
a table sums them up at the end. The server stops in uvicorn's order.

Ctrl-C stops the load and the server cleanly and returns the stages finished so far, with
``is_interrupted`` set. This module never exits the process and never leaves an engine behind.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from aiscale.bench.chat import run_chat_bench
from aiscale.bench.chat_config import ChatBenchConfig
from aiscale.bench.chat_report import chat_progress
from aiscale.bench.chat_results import ChatBenchResult
from aiscale.config import load_config, parse_config
from aiscale.demo import ServedGateway, dashboard_url, say, show_dashboard, stage_users
from aiscale.errors import AiscaleError, InvalidInput
from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.serving.app import GatewayApp
from aiscale.serving.launch import build_gateway
from aiscale.serving.server import wait_ready

__all__ = ["LlmDemoSummary", "LlmStage", "run_llm_demo"]

MODEL = "smollm2"
_READY_TIMEOUT_S = 180.0
_FIRST_TOKEN_TIMEOUT_S = 120.0
#: The simulated users' conversations: turns, words per question, answer length, think time.
_TURNS = 4
_PROMPT_TOKENS = 48
_MAX_TOKENS = 48
_THINK_TIME_S = 1.0


@dataclass(frozen=True, slots=True)
class LlmStage:
    """One stage of the ramp: ``num_users`` chatting users and what the bench measured."""

    index: int
    num_users: int
    result: ChatBenchResult


@dataclass(frozen=True, slots=True)
class LlmDemoSummary:
    """What the LLM demo measured. ``first_token_s``: launch to the first streamed token
    (``None`` when interrupted before); ``stages``: those that ran to their end."""

    url: str
    first_token_s: float | None
    stages: tuple[LlmStage, ...]
    data_dir: Path
    is_interrupted: bool = False

    @property
    def num_requests(self) -> int:
        return sum(s.result.requests for s in self.stages)

    @property
    def num_errors(self) -> int:
        return sum(s.result.num_errors for s in self.stages)


def run_llm_demo(
    *,
    data_dir: Path | None = None,
    duration_s: float = 60.0,
    max_users: int = 8,
    console: Console | None = None,
    open_browser: bool = False,
) -> LlmDemoSummary:
    """Serve smollm2, let ``max_users`` users chat for ``duration_s`` seconds (shared by the
    stages), stop, print a summary. Raises ``InvalidInput`` for bad arguments and
    ``AiscaleError`` when the server or its engine cannot start."""
    users = stage_users(max_users)
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise InvalidInput(f"duration must be > 0 s, got {duration_s}", field="duration")
    console = console or Console()
    is_temporary = data_dir is None
    folder = Path(tempfile.mkdtemp(prefix="aiscale-demo-llm-")) if data_dir is None else data_dir
    folder = folder.expanduser().resolve()
    try:
        return _run_in(folder, users, duration_s, console, open_browser, is_temporary)
    finally:
        if is_temporary:
            shutil.rmtree(folder, ignore_errors=True)


def _run_in(
    folder: Path,
    users: tuple[int, ...],
    duration_s: float,
    console: Console,
    open_browser: bool,
    is_temporary: bool,
) -> LlmDemoSummary:
    folder.mkdir(parents=True, exist_ok=True)
    config = load_config(server_overrides={
        "host": "127.0.0.1", "port": 0, "data_dir": str(folder),
        "registry_url": f"sqlite:///{folder / 'registry.db'}",
    })  # fmt: skip
    registry = SqlRegistry.open(config.server.resolved_registry_url)
    served: ServedGateway | None = None
    temporary_key_id: str | None = None
    stages: list[LlmStage] = []
    first_token_s: float | None = None
    is_interrupted = False
    try:
        say(console, f"data dir: {folder}")
        artifacts = FsspecArtifactStore(folder / "artifacts", cache_dir=folder / "cache")
        headers: tuple[tuple[str, str], ...] = ()
        dashboard_key: str | None = None
        if registry.active_keys():
            # The gateway would refuse anonymous calls: a key for the demo only (the dashboard
            # needs admin, its LLM panel metrics); revoked when the demo ends.
            plaintext, key = registry.create_key(
                "aiscale demo --llm (temporary)", frozenset({"inference", "admin", "metrics"})
            )
            temporary_key_id = key.key_id
            headers = (("authorization", f"Bearer {plaintext}"),)
            dashboard_key = plaintext
        deployment = parse_config({"deployments": [{
            "name": MODEL, "model": MODEL, "engine": {"kind": "llamacpp", "model": MODEL},
        }]}).deployments[0]  # fmt: skip
        gateway = build_gateway(config, registry, artifacts, [deployment])
        say(console, f"starting {MODEL} on llama.cpp ...")
        launched = time.monotonic()
        served = ServedGateway.start(GatewayApp(gateway))
        try:
            wait_ready(served.url, _READY_TIMEOUT_S, is_alive=served.thread.is_alive)
        except (TimeoutError, RuntimeError) as exc:
            raise AiscaleError(f"the demo server did not start: {exc}") from None
        _first_token(served.url, headers)
        first_token_s = time.monotonic() - launched
        say(console, f"serving on {served.url}; first token after {first_token_s:.1f} s")
        show_dashboard(console, dashboard_url(served.url, dashboard_key), open_browser)
        say(console, "press Ctrl-C to stop early")
        stage_s = duration_s / len(users)
        for index, num_users in enumerate(users):
            say(console, f"stage {index + 1}/{len(users)}: {num_users} user(s) chatting "
                          f"for {stage_s:.0f} s")  # fmt: skip
            config_stage = ChatBenchConfig(
                url=served.url, concurrency=num_users, duration_s=stage_s, model=MODEL,
                headers=headers, seed=index, turns=_TURNS, think_time_s=_THINK_TIME_S,
                prompt_tokens=_PROMPT_TOKENS, max_tokens=_MAX_TOKENS, ignore_eos=False,
            )  # fmt: skip
            with chat_progress(console, description=f"{num_users} user(s)") as on_progress:
                result = asyncio.run(run_chat_bench(config_stage, on_progress=on_progress))
            stages.append(LlmStage(index, num_users, result))
    except KeyboardInterrupt:
        is_interrupted = True
    finally:
        try:
            if served is not None:
                say(console, "stopping: draining requests and stopping the engine ...")
                served.stop()
            if temporary_key_id is not None:
                registry.revoke_key(temporary_key_id)
        finally:
            registry.close()
    summary = LlmDemoSummary(served.url if served is not None else "", first_token_s,
                             tuple(stages), folder, is_interrupted)  # fmt: skip
    console.print(render_llm_summary(summary))
    # On a line of its own, never wrapped: the path can be copied whole.
    say(console, "data dir removed" if is_temporary else f"data dir kept in {folder}")
    return summary


def render_llm_summary(summary: LlmDemoSummary) -> Table:
    """The stages side by side: users, requests, errors, tokens/s, TTFT, ITL, cache hits."""
    title = "aiscale demo --llm" + (" (interrupted)" if summary.is_interrupted else "")
    table = Table(title=title)
    for column in ("users", "requests", "errors", "output tok/s", "TTFT p50 ms",
                   "TTFT p99 ms", "ITL p50 ms", "prompt cache hits"):  # fmt: skip
        table.add_column(column, justify="right")
    for stage in summary.stages:
        r = stage.result
        share = r.cache_hit_share
        table.add_row(
            str(stage.num_users), f"{r.requests:,}", f"{r.num_errors:,}",
            f"{r.output_tokens_per_s:,.1f}", _ms(r.ttft.p50_ms), _ms(r.ttft.p99_ms),
            _ms(r.itl.p50_ms), "-" if share is None else f"{share:.0%}",
        )  # fmt: skip
    first = "-" if summary.first_token_s is None else f"{summary.first_token_s:.1f} s"
    table.caption = f"cold start to the first token: {first}"
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _first_token(url: str, headers: tuple[tuple[str, str], ...]) -> None:
    """Stream one chat request until its first token; ``AiscaleError`` if none comes."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4, "stream": True}  # fmt: skip
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                          headers=dict(headers), timeout=_FIRST_TOKEN_TIMEOUT_S) as response:
            if response.status_code != 200:
                raise AiscaleError(f"the first chat request got {response.status_code}: "
                                   f"{response.read()[:200]!r}")  # fmt: skip
            for line in response.iter_lines():
                if line.startswith("data:") and '"content":"' in line.replace(" ", ""):
                    return
    except httpx.HTTPError as exc:
        raise AiscaleError(f"the first chat request failed: {exc}") from None
    raise AiscaleError("the first chat request streamed no token")
