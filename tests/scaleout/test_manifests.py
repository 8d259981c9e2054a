"""The example Kubernetes manifests in ``deploy/kubernetes`` hang together and match aiscale:
known kinds, only flags ``aiscale serve`` has, a config file our own parser accepts, and the
same ports, names and labels wherever one part refers to another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from aiscale.cli import app
from aiscale.config import parse_config

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("ray.io/v1", "RayCluster"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    """Every document by kind (each kind appears once in the example)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert (doc["apiVersion"], doc["kind"]) in KINDS, (path.name, doc["kind"])
            assert doc["kind"] not in found, f"two {doc['kind']}s"
            found[doc["kind"]] = doc
    return found


def serve_flags() -> set[str]:
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return {flag for param in command.params for flag in (*param.opts, *param.secondary_opts)}


def test_every_file_is_listed_and_every_object_named(docs: dict[str, dict[str, Any]]) -> None:
    """kustomization.yaml lists every other file, and every object has a name."""
    listed = set(docs["Kustomization"]["resources"])
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for kind, doc in docs.items():
        if kind != "Kustomization":
            assert doc["metadata"]["name"], kind


def test_gateway_runs_aiscale_serve_with_its_config(docs: dict[str, dict[str, Any]]) -> None:
    """The container runs ``aiscale serve`` with flags it really has; the mounted aiscale.yaml
    passes our parser; ports, probes, config map and Ray cluster names agree."""
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["aiscale"] and container["args"][0] == "serve"
    args = container["args"]
    flags = {arg for arg in args if arg.startswith("--")}
    assert flags <= serve_flags(), flags - serve_flags()
    config_path = args[args.index("--config") + 1]

    config_map = docs["ConfigMap"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    file_name = config_path.removeprefix(mount["mountPath"] + "/")
    config = parse_config(yaml.safe_load(config_map["data"][file_name]))

    server = config.server
    (port,) = container["ports"]
    assert port["containerPort"] == server.port == int(args[args.index("--port") + 1])
    assert server.redis_url is not None and server.capture.nats_url is not None
    probes = [("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")]
    for probe, path in probes:
        assert container[probe]["httpGet"] == {"path": path, "port": port["name"]}
    # The pod outlives the drain: SIGTERM, then in-flight requests finish, then it exits.
    assert server.drain_timeout_s + 5 < pod["terminationGracePeriodSeconds"]
    ray_cluster = docs["RayCluster"]["metadata"]["name"]
    assert server.ray_address == f"{ray_cluster}-head-svc:6379"  # KubeRay's head Service


def test_service_pdb_and_hpa_select_the_gateways(docs: dict[str, dict[str, Any]]) -> None:
    """Service, PodDisruptionBudget and HPA all point at the gateway pods and port."""
    deployment = docs["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = docs["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    pdb = docs["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]
    }
    assert hpa["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["maxReplicas"]
