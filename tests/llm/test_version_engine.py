"""A registered LLM version's own engine settings, and the token-aware policies in the
config: checked when loaded or deployed, naming the bad field (no engine is started)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from aiscale.config import parse_config
from aiscale.engines.spec import EngineSpec
from aiscale.errors import ConfigError, InvalidInput
from aiscale.serving.specs import engine_of_version, version_engine_fields

ENGINE = EngineSpec(
    "llamacpp", "/models/a.gguf", "chat", threads=2, parallel=4, extra_args={"n_batch": 512}
)


def version(config: dict[str, Any] | None, runtime: str = "llamacpp") -> SimpleNamespace:
    return SimpleNamespace(runtime=runtime, uri="/models/a.gguf", config=config)


def test_a_version_runs_its_engine_with_its_own_settings() -> None:
    """Threads, slots and extra args of the version win over the deployment's; extra args
    are merged; a version without settings runs the deployment's engine as it is."""
    found = engine_of_version(
        ENGINE,
        version({"engine": {"threads": 1, "parallel": 2, "extra_args": {"n_ubatch": 64}}}),
    )
    assert found is not None
    assert (found.threads, found.parallel) == (1, 2)
    assert dict(found.extra_args) == {"n_batch": 512, "n_ubatch": 64}
    assert engine_of_version(ENGINE, version(None)) is ENGINE
    assert engine_of_version(ENGINE, version({"engine": {"prompt_cache": False}})) is ENGINE


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"gpu": 1}, "config.engine.gpu"),
        ({"threads": 0}, "config.engine.threads"),
        ({"parallel": True}, "config.engine.parallel"),
        ({"extra_args": ["n_batch"]}, "config.engine.extra_args"),
        ({"extra_args": {"model_path": "/etc/passwd"}}, "config.engine"),
        ({"prompt_cache": "no"}, "config.engine.prompt_cache"),
    ],
)
def test_bad_version_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine_of_version(ENGINE, version({"engine": settings}))
    assert caught.value.field == field


def test_prompt_cache_is_a_per_request_llamacpp_setting() -> None:
    """``prompt_cache: false`` reaches every request body of a llama.cpp version; a vLLM
    version cannot take it per request (its prefix caching is a server flag)."""
    assert version_engine_fields("llamacpp", {"engine": {"prompt_cache": False}}) == {
        "cache_prompt": False
    }
    assert version_engine_fields("llamacpp", {"engine": {"threads": 1}}) == {}
    assert version_engine_fields("llamacpp", None) == {}
    with pytest.raises(InvalidInput) as caught:
        version_engine_fields("vllm", {"engine": {"prompt_cache": False}})
    assert caught.value.field == "config.engine.prompt_cache"


def test_a_token_aware_policy_needs_an_llm_deployment() -> None:
    """``llm-*`` policies are accepted for a deployment with an engine and refused, naming
    the field, for a model deployment."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"deployments": [
            {"name": "m", "model": "m", "autoscaling": {"policy": "llm-target"}},
        ]})
    assert caught.value.field == "deployments.0.autoscaling.policy"
    config = parse_config({"deployments": [{
        "name": "chat", "model": "chat",
        "engine": {"kind": "openai-upstream", "model": "gpt", "urls": ["http://127.0.0.1:9/v1"]},
        "autoscaling": {"policy": "llm-target", "knobs": {"max_replicas": 2}},
    }]})
    autoscaling = config.deployments[0].autoscaling
    assert autoscaling is not None and autoscaling.policy == "llm-target"
