"""A runnable ``DeploymentSpec`` from a deployment's config and its registry version record.

The one translation from the config file's vocabulary (``DeploymentConfig``) to what the
gateway runs: batching in seconds, autoscaling and quality settings, GPUs from the gateway's
pool on local replicas, or Ray actor options with the Ray runtime. No I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from aiscale.config import DeploymentConfig
from aiscale.data.quality_window import QualitySettings
from aiscale.engines.spec import EngineSpec
from aiscale.errors import InvalidInput
from aiscale.gpus import GpuDemand
from aiscale.replicas.pool import ReplicaRuntime
from aiscale.replicas.ray_pool import RayPlacement
from aiscale.serving.batcher import BatchingSettings
from aiscale.serving.lane import AutoscalingSettings, DeploymentSpec, LlmRouting

__all__ = [
    "LlmVersion",
    "engine_of_version",
    "llm_version_of",
    "version_engine_fields",
    "placement_from_config",
    "spec_from_config",
]


def placement_from_config(config: DeploymentConfig, runtime: ReplicaRuntime) -> RayPlacement | None:
    """A deployment's resource requests as Ray actor options; ``None`` for the local runtime.

    CPUs default to the deployment's ``num_threads`` (else 1), so a replica's torch threads
    and its Ray reservation agree.
    """
    if runtime.kind != "ray":
        return None
    for name in ("gpu_memory_mb", "team"):
        if getattr(config, name) is not None:
            raise InvalidInput(
                f"{config.name}: the ray runtime places GPUs by count (gpus) only; "
                f"{name} needs runtime: local",
                field=name,
            )
    return RayPlacement(
        address=runtime.ray_address,
        num_cpus=config.cpus or float(config.num_threads or 1),
        num_gpus=config.gpus,
        memory_bytes=config.memory_mb * 1024 * 1024 if config.memory_mb is not None else None,
        resources=dict(config.ray_resources),
    )


@dataclass(frozen=True, slots=True)
class LlmVersion:
    """The version of an LLM deployment that the registry does not know: the config's engine
    model, as version ``config.version`` (default ``1``)."""

    version: str
    runtime: str
    uri: str
    config: dict[str, Any] | None = None


def llm_version_of(config: DeploymentConfig) -> LlmVersion:
    """The version record of an LLM deployment whose model is not registered."""
    assert config.engine is not None
    return LlmVersion(config.version or "1", config.engine.kind, config.engine.model)


#: Engine settings a registered LLM version may carry in its ``config`` as ``{"engine":
#: {...}}``, over the deployment's: a new version often comes with its own (more slots, other
#: threads, another batch size, prompt caching off), and a canary of it is judged with them.
#: ``prompt_cache: false`` (llama.cpp) makes the engine compute every prompt whole instead of
#: reusing a slot's cached prefix (``cache_prompt`` of each request, ``version_engine_fields``).
VERSION_ENGINE_KEYS = frozenset({"threads", "parallel", "extra_args", "prompt_cache"})


def engine_of_version(engine: EngineSpec | None, version: Any) -> EngineSpec | None:
    """An LLM version's engine: the deployment's engine, running the version's model when the
    registry holds the version as a model of that engine kind (``runtime: llamacpp``, its
    ``uri`` the GGUF file or its ``s3://`` object, whose expected sha256 is then the
    version's ``artifact_digest`` when it has one), with the version's own engine settings
    (``VERSION_ENGINE_KEYS``; ``extra_args`` merged over the deployment's); ``None`` for a
    model that is not an LLM. A bad setting raises ``InvalidInput`` naming it."""
    if engine is None:
        return None
    if str(version.runtime) != engine.kind:
        return engine
    from aiscale.engines.models import is_object_uri, model_source

    model = str(version.uri)
    if model != engine.model and engine.kind == "llamacpp":
        model = model_source(model)
    digest = getattr(version, "artifact_digest", None)
    engine = _with_version_settings(engine, getattr(version, "config", None))
    if engine.kind == "llamacpp" and digest and is_object_uri(model):
        return dataclasses.replace(engine, model=model, model_sha256=str(digest))
    return dataclasses.replace(engine, model=model) if model != engine.model else engine


def _with_version_settings(engine: EngineSpec, config: Any) -> EngineSpec:
    settings = config.get("engine") if isinstance(config, dict) else None
    if settings is None:
        return engine
    if not isinstance(settings, dict):
        raise InvalidInput("a version's engine settings must be a mapping", field="config.engine")
    unknown = sorted(set(settings) - VERSION_ENGINE_KEYS)
    if unknown:
        raise InvalidInput(
            f"a version may not set engine {unknown[0]!r}; it may set "
            f"{', '.join(sorted(VERSION_ENGINE_KEYS))}",
            field=f"config.engine.{unknown[0]}",
        )
    if "prompt_cache" in settings:
        version_engine_fields(engine.kind, config)  # checked with the rest
    changes: dict[str, Any] = {}
    for name in ("threads", "parallel"):
        value = settings.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput("must be an integer >= 1", field=f"config.engine.{name}")
        changes[name] = value
    extra = settings.get("extra_args")
    if extra is not None:
        if not isinstance(extra, dict):
            raise InvalidInput("must be a mapping", field="config.engine.extra_args")
        changes["extra_args"] = {**engine.extra_args, **extra}
    if not changes:
        return engine
    try:
        return dataclasses.replace(engine, **changes)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="config.engine") from None


def version_engine_fields(engine_kind: str, config: Any) -> dict[str, Any]:
    """Fields a version's settings add to each request body sent to its engines (``{}``:
    none). ``InvalidInput`` for a setting the engine kind cannot take per request."""
    settings = config.get("engine") if isinstance(config, dict) else None
    if not isinstance(settings, dict) or "prompt_cache" not in settings:
        return {}
    value = settings["prompt_cache"]
    if not isinstance(value, bool):
        raise InvalidInput("must be true or false", field="config.engine.prompt_cache")
    if engine_kind != "llamacpp":
        raise InvalidInput(
            f"prompt_cache is a llamacpp setting; a {engine_kind} engine sets prefix caching "
            "for the whole server", field="config.engine.prompt_cache",
        )
    return {"cache_prompt": value}


def spec_from_config(
    config: DeploymentConfig, version: Any, runtime: ReplicaRuntime | None = None
) -> DeploymentSpec:
    """A runnable spec from a deployment's config and its registry version record.

    With the Ray ``runtime`` the replicas' resources become Ray actor options and Ray, not
    the gateway's GPU pool, assigns the GPUs. An LLM deployment (``engine:``) runs engine
    replicas; its ``version`` may be ``llm_version_of(config)`` when the registry does not
    hold its model (``ConfigError`` when the engine's model file is missing).
    """
    batching = config.batching
    placement = placement_from_config(config, runtime or ReplicaRuntime())
    engine = None
    routing = LlmRouting()
    if config.engine is not None:
        engine = config.engine.to_spec(config.name, num_threads=config.num_threads)
        if not isinstance(version, LlmVersion):
            engine = engine_of_version(engine, version)
        routing = LlmRouting(config.engine.routing, dict(config.engine.routing_knobs))
    return DeploymentSpec(
        name=config.name,
        model=config.model,
        version=str(version.version),
        runtime=str(version.runtime),
        uri=str(version.uri),
        model_config=dict(version.config or {}),
        replicas=config.replicas,
        batching=BatchingSettings(
            max_batch_size=batching.max_batch_size,
            max_batch_delay_s=batching.max_batch_delay_ms / 1000.0,
            max_queue=batching.max_queue,
            max_retries=batching.max_retries,
        ),
        timeout_s=config.timeout_ms / 1000.0,
        cache_max_bytes=config.cache.max_bytes if config.cache.is_enabled else 0,
        num_threads=config.num_threads,
        max_inflight_batches=config.max_inflight_batches,
        autoscaling=None
        if config.autoscaling is None
        else AutoscalingSettings(
            config.autoscaling.policy,
            config.autoscaling.decision_interval_s,
            dict(config.autoscaling.knobs),
        ),
        gpu=GpuDemand(
            config.gpus, config.gpu_memory_mb, config.team, config.gpu_wait_s, config.gpu_priority
        )
        if config.gpus > 0 and placement is None
        else None,
        placement=placement,
        quality=None
        if config.quality is None
        else QualitySettings(
            config.quality.to_expectations(),
            window_s=config.quality.window_s,
            interval_s=config.quality.interval_s,
            max_examples=config.quality.max_examples,
        ),
        engine=engine,
        routing=routing,
    )
