"""The Helm chart through Helm itself: it lints, renders the objects we expect, and refuses to
render a keyless gateway unless asked. Skipped where ``helm`` is not installed."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy.files import CHART, default_image


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("helm is not installed (Debian has no helm package)")
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def test_chart_lints() -> None:
    """``helm lint`` passes with a registry configured."""
    done = _helm("lint", str(CHART), "--set", "registry.url=postgresql+psycopg://a@b/c")
    assert done.returncode == 0, done.stdout + done.stderr


def test_chart_renders_the_gateway_and_its_optional_parts() -> None:
    """Deployment, Service, ConfigMap and Secret by default; the HPA only when enabled; the
    image is the one the Dockerfile builds; without keys' registry nor insecure it fails."""
    done = _helm("template", "t", str(CHART), "--set", "registry.url=sqlite:////tmp/r.db")
    assert done.returncode == 0, done.stderr
    documents = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert sorted(d["kind"] for d in documents) == ["ConfigMap", "Deployment", "Secret", "Service"]
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == default_image()
    scaled = _helm("template", "t", str(CHART), "--set", "insecure=true",
                   "--set", "autoscaling.enabled=true")
    assert scaled.returncode == 0, scaled.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(scaled.stdout) if d)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service"]
    refused = _helm("template", "t", str(CHART))
    assert refused.returncode != 0 and "without API keys" in refused.stderr
