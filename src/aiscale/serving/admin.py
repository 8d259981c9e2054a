"""Admin endpoints under ``/admin``: list, deploy, scale and remove deployments; refresh keys.

Called by ``GatewayApp`` after the caller was checked for the ``admin`` scope. Bodies are
validated with the same pydantic config models as the config file (the edge of the system).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiscale.config import DeploymentConfig
from aiscale.errors import InvalidInput, MethodNotAllowed, NotFound
from aiscale.serving.gateway import Gateway
from aiscale.serving.lane import VersionLane

if TYPE_CHECKING:
    from aiscale.serving.app import Request, Response


class ScaleBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    replicas: int = Field(ge=0, le=256)


def _validated(model: type[BaseModel], body: bytes) -> Any:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{path}: {first['msg']}", field=path) from None


def describe_lane(lane: VersionLane) -> dict[str, Any]:
    spec = lane.spec
    return {
        "version": spec.version,
        "runtime": spec.runtime,
        "replicas": {
            "ready": lane.pool.num_ready,
            "starting": lane.pool.num_starting,
            "wanted": lane.pool.num_wanted,
            "pids": [r.pid for r in lane.pool.replicas() if not r.is_dead],
        },
        "queue_depth": lane.batcher.queue_depth,
        "max_batch_size": spec.batching.max_batch_size,
        "max_batch_delay_ms": spec.batching.max_batch_delay_s * 1000.0,
        "is_ready": lane.is_ready,
    }


def describe(gateway: Gateway, name: str) -> dict[str, Any]:
    """The primary version's fields at the top level, every version under ``versions``."""
    deployment = gateway.deployment(name)
    split = deployment.split
    return {
        "name": deployment.name,
        "model": deployment.spec.model,
        **describe_lane(deployment.primary),
        "is_ready": deployment.is_ready,
        "split": {
            "weights": dict(split.weights),
            "shadow_version": split.shadow_version,
            "shadow_fraction": split.shadow_fraction,
        },
        "versions": {version: describe_lane(lane) for version, lane in deployment.lanes.items()},
    }


class AdminApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def handle(self, request: Request, method: str, parts: list[str]) -> Response:
        gateway = self.gateway
        if parts == ["deployments"]:
            if method == "GET":
                return _ok({"deployments": [describe(gateway, n) for n in gateway.deployments]})
            if method == "POST":
                config = _validated(DeploymentConfig, await request.body())
                deployment = await gateway.deploy_config(config)
                return _ok(describe(gateway, deployment.spec.name))
            raise MethodNotAllowed("use GET or POST", field="method")
        if len(parts) == 2 and parts[0] == "deployments":
            if method == "GET":
                return _ok(describe(gateway, parts[1]))
            if method == "DELETE":
                await gateway.undeploy(parts[1])
                return _ok({"deleted": parts[1]})
            raise MethodNotAllowed("use GET or DELETE", field="method")
        if len(parts) == 3 and parts[0] == "deployments" and parts[2] == "scale":
            if method != "POST":
                raise MethodNotAllowed("use POST", field="method")
            body = _validated(ScaleBody, await request.body())
            await gateway.scale(parts[1], body.replicas)
            return _ok(describe(gateway, parts[1]))
        if parts == ["keys", "refresh"]:
            if method != "POST":
                raise MethodNotAllowed("use POST", field="method")
            await gateway.refresh_keys()
            return _ok({"refreshed": True})
        raise NotFound(f"no admin endpoint at /admin/{'/'.join(parts)}", field="path")


def _ok(payload: Any) -> Response:
    return 200, orjson.dumps(payload), [(b"content-type", b"application/json")]
