"""The container image for real: build it from the Dockerfile, create an API key in a data
volume as the Dockerfile's header says, serve the bundled model on 0.0.0.0 inside the
container, answer one embeddings request, then stop. Skipped where no container engine
with a running daemon exists (the build needs network access to PyPI and the PyTorch index).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.deploy.files import ROOT
from tests.polling import wait_for


def _engine() -> str:
    """``docker`` or ``podman`` when one can build and run here; else skip, naming what lacks."""
    missing = []
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path is None:
            missing.append(f"no {name}")
            continue
        info = subprocess.run([path, "info"], capture_output=True, text=True, timeout=30)
        if info.returncode == 0:
            return path
        missing.append(f"{name} has no running daemon")
    if shutil.which("buildah"):
        missing.append("buildah builds but runs nothing")
    pytest.skip("no container engine to build and run the image: " + ", ".join(missing))


def _run(*args: str, timeout_s: float = 120) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[str, str]]:
    engine = _engine()
    tag = f"aiscale-test:{uuid.uuid4().hex[:8]}"
    _run(engine, "build", "-t", tag, str(ROOT), timeout_s=1500)
    yield engine, tag
    subprocess.run([engine, "rmi", "-f", tag], capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_image_serves_minilm_with_a_key_as_non_root(image: tuple[str, str]) -> None:
    """The image runs as uid 10001, refuses to serve on 0.0.0.0 before a key exists, then,
    with a key created in its volume, answers an embeddings request with 384 numbers,
    refuses one without the key, reports healthy, and stops on SIGTERM."""
    engine, tag = image
    volume = f"aiscale-test-{uuid.uuid4().hex[:8]}"
    name = f"aiscale-test-{uuid.uuid4().hex[:8]}"
    mount = f"{volume}:/var/lib/aiscale"
    try:
        assert _run(engine, "run", "--rm", "--entrypoint", "id", tag, "-u").strip() == "10001"
        refused = subprocess.run(
            [engine, "run", "--rm", "-v", mount, tag], capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 1 and "without API keys" in refused.stderr
        created = _run(engine, "run", "--rm", "-v", mount, tag,
                       "keys", "create", "test", "--scope", "inference", "--scope", "admin")
        key = created.strip().splitlines()[-1]
        _run(engine, "run", "-d", "--name", name, "-v", mount, "-p", "127.0.0.1::8000", tag)
        address = _run(engine, "port", name, "8000/tcp").strip().splitlines()[0]
        # ``localhost``: the gateway answers only Host names it knows (serving/origin.py),
        # and inside the container the connection arrives on the container's own address.
        url = f"http://localhost:{address.rsplit(':', 1)[1]}"

        def is_ready() -> bool:
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(is_ready, 180.0, "the container's gateway to be ready", interval_s=0.5)
        body = {"model": "minilm", "input": "a sentence to embed"}
        answer = httpx.post(f"{url}/v1/embeddings", json=body,
                            headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["data"][0]["embedding"]) == 384
        assert httpx.post(f"{url}/v1/embeddings", json=body, timeout=30).status_code == 401
        wait_for(
            lambda: json.loads(_run(engine, "inspect", "--format", "{{json .State.Health}}",
                                    name))["Status"] == "healthy",
            60.0,
            "the HEALTHCHECK to report healthy",
            interval_s=1.0,
        )
        _run(engine, "stop", "--time", "30", name, timeout_s=60)
        code = _run(engine, "inspect", "--format", "{{.State.ExitCode}}", name).strip()
        assert code == "0", _run(engine, "logs", name)
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run([engine, "volume", "rm", "-f", volume], capture_output=True, timeout=60)
