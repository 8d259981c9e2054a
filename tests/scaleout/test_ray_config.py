"""The runtime settings: config fields, environment, flags, and their bad values.

No Ray cluster is needed: each bad value is refused before one would be joined.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from aiscale.cli import app
from aiscale.config import DeploymentConfig, load_config, parse_config
from aiscale.errors import ConfigError, InvalidInput
from aiscale.replicas.pool import ReplicaRuntime
from aiscale.replicas.ray_pool import RayPlacement
from aiscale.serving.specs import placement_from_config

RAY = ReplicaRuntime("ray", "10.0.0.1:6379")


def deployment(**fields: object) -> DeploymentConfig:
    return DeploymentConfig.model_validate({"name": "m", "model": "m", **fields})


def test_runtime_comes_from_file_then_environment_then_flags(tmp_path: Path) -> None:
    """``server.runtime``/``server.ray_address`` are overridden by ``AISCALE_RUNTIME``/
    ``AISCALE_RAY_ADDRESS``, which flags override in turn; the default is local."""
    assert load_config(environ={}).server.runtime == "local"
    path = tmp_path / "aiscale.yaml"
    path.write_text("server:\n  runtime: ray\n  ray_address: 10.0.0.1:6379\n")
    assert load_config(path, environ={}).server.ray_address == "10.0.0.1:6379"
    environ = {"AISCALE_RUNTIME": "ray", "AISCALE_RAY_ADDRESS": "10.0.0.2:6379"}
    assert load_config(path, environ=environ).server.ray_address == "10.0.0.2:6379"
    flagged = load_config(path, environ=environ, server_overrides={"ray_address": "auto"})
    assert (flagged.server.runtime, flagged.server.ray_address) == ("ray", "auto")


@pytest.mark.parametrize(
    ("server", "field"),
    [
        ({"runtime": "kubernetes"}, "server.runtime"),
        ({"ray_address": "10.0.0.1:6379"}, "server.ray_address"),
        ({"runtime": "ray", "ray_address": ""}, "server.ray_address"),
    ],
)
def test_bad_runtime_settings_name_their_field(server: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"server": server})
    assert caught.value.field == field


def test_ray_refuses_gpu_pool_settings() -> None:
    """GPU memory shares and team quotas belong to the gateway's GPU pool, which the Ray
    runtime does not use: asking for them there is an error, not a silent no-op."""
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "server": {"runtime": "ray"},
                "deployments": [{"name": "m", "model": "m", "gpus": 0.5, "gpu_memory_mb": 8000}],
            }
        )
    assert caught.value.field == "deployments.0.gpu_memory_mb"
    with pytest.raises(InvalidInput):
        placement_from_config(deployment(gpus=1, team="a"), RAY)


@pytest.mark.parametrize(
    ("fields", "placement"),
    [
        ({}, RayPlacement("10.0.0.1:6379", num_cpus=1.0)),
        ({"num_threads": 4}, RayPlacement("10.0.0.1:6379", num_cpus=4.0)),
        (
            {"cpus": 0.5, "gpus": 1, "memory_mb": 512, "ray_resources": {"a10": 1}},
            RayPlacement(
                "10.0.0.1:6379",
                num_cpus=0.5,
                num_gpus=1.0,
                memory_bytes=512 * 1024 * 1024,
                resources={"a10": 1.0},
            ),
        ),
    ],
)
def test_resource_requests_become_actor_options(
    fields: dict[str, object], placement: RayPlacement
) -> None:
    """CPUs default to the replica's threads (else 1); memory is given in MiB."""
    config = deployment(**fields)
    assert placement_from_config(config, RAY) == placement
    assert placement_from_config(config, ReplicaRuntime()) is None


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        (["--runtime", "ray", "--ray-address", "127.0.0.1:1"], {}, "no Ray cluster at 127.0.0.1:1"),
        ([], {"AISCALE_RUNTIME": "ray", "AISCALE_RAY_ADDRESS": "127.0.0.1:1"}, "127.0.0.1:1"),
        (["--runtime", "ray", "--ray-address", "head:port"], {}, "is not host:port"),
        (["--runtime", "kubernetes"], {}, "server.runtime: Input should be 'local' or 'ray'"),
        (["--ray-address", "127.0.0.1:6379"], {}, "server.ray_address"),
    ],
)
def test_bad_runtime_flags_are_one_clear_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    environ: dict[str, str],
    message: str,
) -> None:
    """An unknown runtime, an unreachable or malformed Ray address, or an address without
    ``--runtime ray`` exits 1 with one line naming the problem, never a traceback."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(
        app, ["serve", "tests.models:Echo", "--port", "0", "--data-dir", str(tmp_path), *args]
    )
    assert result.exit_code == 1, result.output
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.exception is not None
    assert not (tmp_path / "registry.db").exists()  # refused before anything was written
