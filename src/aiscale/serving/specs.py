"""A runnable ``DeploymentSpec`` from a deployment's config and its registry version record.

The one translation from the config file's vocabulary (``DeploymentConfig``) to what the
gateway runs: batching in seconds, autoscaling and quality settings, GPUs from the gateway's
pool on local replicas, or Ray actor options with the Ray runtime. No I/O.
"""

from __future__ import annotations

from typing import Any

from aiscale.config import DeploymentConfig
from aiscale.data.quality_window import QualitySettings
from aiscale.errors import InvalidInput
from aiscale.gpus import GpuDemand
from aiscale.replicas.pool import ReplicaRuntime
from aiscale.replicas.ray_pool import RayPlacement
from aiscale.serving.batcher import BatchingSettings
from aiscale.serving.lane import AutoscalingSettings, DeploymentSpec

__all__ = ["placement_from_config", "spec_from_config"]


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


def spec_from_config(
    config: DeploymentConfig, version: Any, runtime: ReplicaRuntime | None = None
) -> DeploymentSpec:
    """A runnable spec from a deployment's config and its registry version record.

    With the Ray ``runtime`` the replicas' resources become Ray actor options and Ray, not
    the gateway's GPU pool, assigns the GPUs.
    """
    batching = config.batching
    placement = placement_from_config(config, runtime or ReplicaRuntime())
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
    )
