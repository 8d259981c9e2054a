"""An LLM deployment's ``engine:`` config: defaults that fit this machine, every bad value
rejected with its dotted path, and the spec each replica runs; ``aiscale serve`` with a bad
GGUF is one line and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiscale.config import parse_config
from aiscale.engines.models import locate_model
from aiscale.errors import ConfigError


def _deployment(engine: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"deployments": [{"name": "chat", "model": "chat", "engine": engine, **fields}]}


def test_the_defaults_give_each_of_four_slots_a_2048_token_window() -> None:
    """``engine: {model: smollm2}``: llama.cpp, 4 slots of 2048 tokens (n_ctx 8192), 512
    output tokens at most, prefix-aware routing, served under the deployment's name."""
    config = parse_config(_deployment({"model": "smollm2"})).deployments[0]
    assert config.engine is not None and config.engine.routing == "prefix_aware"
    spec = config.engine.to_spec(config.name, num_threads=2)
    assert spec.kind == "llamacpp" and spec.model == str(locate_model("smollm2"))
    assert (spec.context_window, spec.parallel, spec.total_context_tokens) == (2048, 4, 8192)
    assert spec.threads == 2 and spec.max_output_tokens == 512
    assert spec.served_model_name == "chat" and spec.replica_spec().max_inflight_batches == 4
    assert spec.batch_scheduling is True
    off = parse_config(_deployment({"model": "smollm2", "batch_scheduling": False}))
    assert off.deployments[0].engine is not None
    assert off.deployments[0].engine.to_spec("chat").batch_scheduling is False


def test_a_deployment_without_engine_is_not_an_llm() -> None:
    config = parse_config({"deployments": [{"name": "m", "model": "m"}]}).deployments[0]
    assert config.engine is None


@pytest.mark.parametrize(
    ("engine", "fields", "path", "message"),
    [
        ({"model": "smollm2", "max_output_tokens": 2048}, {},
         "deployments.0.engine.max_output_tokens", "below context_window"),
        ({"model": "smollm2", "extra_args": {"api_keys": "x"}}, {},
         "deployments.0.engine.extra_args.api_keys", "not an allowed llamacpp setting"),
        ({"model": "smollm2", "extra_args": {"n_batch": True}}, {},
         "deployments.0.engine.extra_args.n_batch", "must be of type int"),
        ({"model": "smollm2", "urls": ["http://x"]}, {},
         "deployments.0.engine.urls", "only used with kind: openai-upstream"),
        ({"model": "gpt-x", "kind": "openai-upstream"}, {},
         "deployments.0.engine.urls", "at least one URL"),
        ({"model": "gpt-x", "kind": "openai-upstream", "urls": ["ftp://x"]}, {},
         "deployments.0.engine.urls.0", "pattern"),
        ({"model": "/models/llama", "kind": "vllm"}, {},
         "deployments.0.gpus", "whole GPUs"),
        ({"model": "smollm2", "routing": "random"}, {},
         "deployments.0.engine.routing", "prefix_aware"),
        ({"model": "smollm2", "parallel": 0}, {},
         "deployments.0.engine.parallel", "greater than or equal to 1"),
        ({"model": "smollm2", "temperature": 0.7}, {},
         "deployments.0.engine.temperature", "Extra inputs are not permitted"),
    ],
    ids=["output-over-window", "extra-not-allowed", "extra-wrong-type", "urls-on-local",
         "upstream-no-url", "upstream-bad-url", "vllm-without-gpus", "unknown-routing",
         "no-slots", "unknown-key"],
)
def test_bad_engine_config_names_the_dotted_field(
    engine: dict[str, Any], fields: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(_deployment(engine, **fields))
    assert caught.value.field == path


def test_a_missing_model_is_found_when_the_spec_is_built() -> None:
    """The file is checked where the deployment runs (a config sent to a server is parsed
    on a client too): ``to_spec`` raises ``ConfigError`` on ``engine.model``."""
    config = parse_config(_deployment({"model": "/nowhere/x.gguf"})).deployments[0]
    assert config.engine is not None
    with pytest.raises(ConfigError, match="does not exist") as caught:
        config.engine.to_spec(config.name)
    assert caught.value.field == "engine.model"


def test_an_upstream_spec_keeps_its_urls_key_variable_and_model_name() -> None:
    engine = {"kind": "openai-upstream", "model": "gpt-x", "api_key_env": "TEAM_KEY",
              "urls": ["https://a.example/v1", "https://b.example/v1"]}
    config = parse_config(_deployment(engine)).deployments[0]
    assert config.engine is not None
    spec = config.engine.to_spec("chat")
    assert spec.upstream_urls == ("https://a.example/v1", "https://b.example/v1")
    assert (spec.model, spec.api_key_env, spec.served_model_name) == ("gpt-x", "TEAM_KEY", "chat")


def test_serve_with_a_bad_gguf_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """``aiscale serve path/to/model.gguf`` locates the model before anything is bound or
    registered: a file that is not GGUF is one line on stderr, exit 1, no traceback (the
    other causes are ``locate_model``'s, tested in test_models.py)."""
    model = tmp_path / "text.gguf"
    model.write_bytes(b"hello")
    message = "is not a GGUF file"
    result = subprocess.run(
        [sys.executable, "-m", "aiscale.cli", "serve", str(model), "--port", "0",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert result.returncode == 1
    assert message in result.stderr and str(model) in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
