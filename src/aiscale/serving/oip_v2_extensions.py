"""Triton's extensions of the Open Inference Protocol v2 that tritonclient calls.

``GET /v2/models/{m}[/versions/{v}]/config`` (model configuration), ``POST
/v2/repository/index`` (model repository) and ``GET /v2/models[/{m}[/versions/{v}]]/stats``
(statistics), rendered from what the lanes already know and count. Pure functions of the
lanes: no I/O, and they never change a lane. The bodies follow Triton's JSON forms
(``model_config.proto``, ``protocol/extension_statistics.md``), so tritonclient's
``get_model_config``, ``get_model_repository_index`` and ``get_inference_statistics`` work.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

from aiscale.model import TensorSpec
from aiscale.serving.deployment import Deployment
from aiscale.serving.http import validated_body
from aiscale.serving.lane import VersionLane

#: Triton's configuration data types by OIP v2 datatype (BYTES is Triton's STRING).
TRITON_TYPES: dict[str, str] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}

_NS_PER_S = 1_000_000_000


class RepositoryIndexRequest(BaseModel):
    """The optional body of ``POST /v2/repository/index``: ``ready`` keeps ready models only."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ready: bool = False


def parse_repository_index_request(body: bytes) -> RepositoryIndexRequest:
    """An empty body asks for every model; ``InvalidInput`` names the field that is wrong."""
    if not body.strip():
        return RepositoryIndexRequest()
    return validated_body(RepositoryIndexRequest, body)


def _tensor_config(spec: TensorSpec) -> dict[str, Any]:
    config: dict[str, Any] = {"name": spec.name, "data_type": TRITON_TYPES[spec.datatype]}
    if spec.shape:
        config["dims"] = list(spec.shape)
    else:
        # Triton needs at least one dimension: a scalar per item is dims [1] reshaped to [].
        config["dims"] = [1]
        config["reshape"] = {"shape": []}
    return config


def model_config(deployment: Deployment, lane: VersionLane) -> dict[str, Any]:
    """The Triton model configuration of ``lane``; dims exclude the batch dimension."""
    spec = lane.spec
    schema = lane.schema
    batching = spec.batching
    return {
        "name": deployment.name,
        "platform": f"aiscale-{spec.runtime}",
        "backend": spec.runtime,
        "version_policy": {"specific": {"versions": sorted(deployment.lanes)}},
        "max_batch_size": batching.max_batch_size,
        "input": [_tensor_config(t) for t in schema.inputs] if schema else [],
        "output": [_tensor_config(t) for t in schema.outputs] if schema else [],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(batching.max_batch_delay_s * 1_000_000),
        },
        "instance_group": [
            {
                "name": f"{deployment.name}_{lane.version}",
                "kind": "KIND_GPU" if spec.num_gpus > 0 else "KIND_CPU",
                "count": lane.pool.num_wanted,
            }
        ],
    }


def _state(lane: VersionLane) -> str:
    # An LLM lane has no tensor schema: it is loaded once an engine is ready.
    if lane.schema is None and not lane.is_ready:
        return "LOADING"
    return "READY" if lane.is_ready else "UNAVAILABLE"


def repository_index(
    deployments: Iterable[Deployment], request: RepositoryIndexRequest
) -> list[dict[str, str]]:
    """One entry per deployed version, ordered by name then version."""
    entries = []
    for deployment in sorted(deployments, key=lambda d: d.name):
        for version in sorted(deployment.lanes):
            state = _state(deployment.lanes[version])
            if request.ready and state != "READY":
                continue
            reason = "" if state == "READY" else "no replica is ready"
            entries.append(
                {"name": deployment.name, "version": version, "state": state, "reason": reason}
            )
    return entries


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": round(seconds * _NS_PER_S)}


def lane_stats(name: str, lane: VersionLane) -> dict[str, Any]:
    """Triton's ``model_stats`` entry for one lane, from its cumulative counters.

    ``success`` and ``fail`` count requests (4xx and 5xx both fail) with their gateway
    latency; ``queue`` counts items with the time they waited in the batcher;
    ``compute_infer`` counts batch executions with the model time of the successful ones
    (a batch, not a request, is the unit the model runs). Input and output conversion is not
    timed apart from the model call, so ``compute_input``/``compute_output`` are zero.
    """
    counts = lane.counts()
    timings = lane.timings()
    num_batches, num_items, model_s = lane.batch_totals()
    num_success = counts.latency_s.num_samples
    return {
        "name": name,
        "version": lane.version,
        "last_inference": round(timings.last_answer_unix_s * 1000),
        "inference_count": num_items,
        "execution_count": num_batches,
        "inference_stats": {
            "success": _duration(num_success, counts.latency_s.total),
            "fail": _duration(counts.num_requests - num_success, timings.failed_s),
            "queue": _duration(timings.num_dequeued, timings.queue_s),
            "compute_input": _duration(0, 0.0),
            "compute_infer": _duration(num_batches, model_s),
            "compute_output": _duration(0, 0.0),
        },
        "batch_stats": [],
    }


def model_stats(deployments: Iterable[Deployment], version: str | None = None) -> dict[str, Any]:
    """The statistics body: every version of each deployment, or only ``version`` (a version
    or an alias; ``NotFound`` when not deployed)."""
    entries = []
    for deployment in deployments:
        if version is not None:
            entries.append(lane_stats(deployment.name, deployment.lane(version)))
            continue
        for name in sorted(deployment.lanes):
            entries.append(lane_stats(deployment.name, deployment.lanes[name]))
    return {"model_stats": entries}
