"""Configuration of the GPU pool and its inventory: a bad inventory, quota or GPU request
rejects the whole file with the dotted path of the field; NVML discovery never fails the
server where there is no GPU or no NVML library."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from aiscale.cli import app
from aiscale.config import parse_config
from aiscale.errors import ConfigError
from aiscale.gpus import GpuPoolConfig, build_inventory, discover_nvml

L4 = {"kind": "L4", "memory_mb": 24_576, "count": 2}
AT_LEAST_0 = "greater than or equal to 0"
AT_LEAST_1 = "greater than or equal to 1"


def gpus(**pool: Any) -> dict[str, Any]:
    return {"server": {"gpus": pool}}


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        (gpus(devices=[{**L4, "memory_mb": 0}]), "server.gpus.devices.0.memory_mb", AT_LEAST_1),
        (gpus(devices=[{**L4, "ids": ["0"]}]), "server.gpus.devices.0", "exactly one of count"),
        (gpus(devices=[{"kind": "L4", "memory_mb": 1}]), "server.gpus.devices.0", "count and ids"),
        (gpus(devices=[L4, {**L4, "count": None, "ids": ["1"]}]), "server.gpus.devices", "'1'"),
        (gpus(devices=[{**L4, "count": None, "ids": ["0;rm"]}]), "server.gpus.devices.0.ids.0",
         "pattern"),
        (gpus(devcies=[L4]), "server.gpus.devcies", "Extra inputs"),
        (gpus(discovery="magic"), "server.gpus.discovery", "'auto', 'nvml' or 'declared'"),
        (gpus(teams=[{"name": "a", "max_gpus": -1}]), "server.gpus.teams.0.max_gpus", AT_LEAST_0),
        (gpus(teams=[{"name": "a", "max_gpu_memory_mb": -5}]),
         "server.gpus.teams.0.max_gpu_memory_mb", AT_LEAST_0),
        (gpus(teams=[{"name": "a"}, {"name": "a"}]), "server.gpus.teams", "repeated: ['a']"),
        (gpus(teams=[{"name": "Bad Team"}]), "server.gpus.teams.0.name", "pattern"),
        (gpus(teams=[{"name": "a", "max_gpu": 1}]), "server.gpus.teams.0.max_gpu", "Extra"),
        (gpus(max_waiting=0), "server.gpus.max_waiting", AT_LEAST_1),
    ],
)
def test_bad_pool_config_names_the_field(config: dict[str, Any], field: str, message: str) -> None:
    """Each bad inventory or quota is rejected whole, naming its dotted path."""
    with pytest.raises(ConfigError) as raised:
        parse_config(config)
    assert raised.value.field == field
    assert raised.value.message.startswith(f"{field}: ")
    assert message in raised.value.message


TEAMS = {"teams": [{"name": "vision", "max_gpus": 1}]}


@pytest.mark.parametrize(
    ("deployment", "field", "message"),
    [
        ({"gpus": 1.5, "team": "vision"}, "deployments.0.gpus", "a whole number, not 1.5"),
        ({"gpus": -1, "team": "vision"}, "deployments.0.gpus", AT_LEAST_0),
        ({"gpus": 65, "team": "vision"}, "deployments.0.gpus", "less than or equal to 64"),
        ({"gpu_memory_mb": 100}, "deployments.0.gpu_memory_mb", "needs gpus > 0"),
        ({"gpus": 0.5, "gpu_memory_mb": 0, "team": "vision"}, "deployments.0.gpu_memory_mb",
         AT_LEAST_1),
        ({"gpus": 1}, "deployments.0.team", "asks for GPUs and must name a team (['vision'])"),
        ({"gpus": 1, "team": "nlp"}, "deployments.0.team", "team 'nlp', which is not declared"),
        ({"gpus": 1, "team": "vision", "gpu_wait_s": -1}, "deployments.0.gpu_wait_s", AT_LEAST_0),
        ({"gpus": 1, "team": "vision", "gpu_priority": 101}, "deployments.0.gpu_priority",
         "less than or equal to 100"),
    ],
)
def test_bad_gpu_request_names_the_field(
    deployment: dict[str, Any], field: str, message: str
) -> None:
    """A deployment's GPU request is checked against the rules and the declared teams."""
    with pytest.raises(ConfigError) as raised:
        parse_config({**gpus(**TEAMS), "deployments": [{"name": "d", "model": "m", **deployment}]})
    assert raised.value.field == field
    assert message in raised.value.message


def test_good_pool_config_numbers_counted_devices_across_groups() -> None:
    """Counted groups are numbered from 0 in file order, as CUDA numbers devices."""
    config = parse_config(
        {
            **gpus(
                devices=[L4, {"kind": "A100", "memory_mb": 81_920, "count": 1}],
                teams=[{"name": "vision", "max_gpus": 1.5, "max_gpu_memory_mb": 30_000}],
            ),
            "deployments": [{"name": "d", "model": "m", "gpus": 0.5, "team": "vision"}],
        }
    )
    assert config.server.gpus.declared_devices() == [
        ("0", "L4", 24_576),
        ("1", "L4", 24_576),
        ("2", "A100", 81_920),
    ]


def test_serve_rejects_a_bad_pool_config(tmp_path: Path) -> None:
    """``aiscale serve --config`` with a bad quota exits 1 before starting anything, with
    one line naming the field."""
    config = tmp_path / "aiscale.yaml"
    config.write_text(yaml.safe_dump(gpus(teams=[{"name": "vision", "max_gpus": -1}])))
    result = CliRunner().invoke(
        app, ["serve", "tests.models:Echo", "--config", str(config), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: server.gpus.teams.0.max_gpus: ")
    assert result.stderr.rstrip().endswith("[server.gpus.teams.0.max_gpus]")


def test_discovery_without_a_gpu_falls_back_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """NVML discovery never raises: with no NVML library, driver or GPU it finds nothing and
    logs why; ``auto`` then uses the declared devices, ``nvml`` an empty pool, with a warning.
    (On a machine with GPUs, NVML's devices are used and the declared ones are not.)"""
    caplog.set_level(logging.INFO, logger="aiscale.gpus.inventory")
    found = discover_nvml()
    declared = GpuPoolConfig.model_validate({"devices": [L4]})
    auto = build_inventory(declared)
    only_nvml = build_inventory(declared.model_copy(update={"discovery": "nvml"}))
    if found:
        assert all(d.source == "nvml" for d in found)
        assert [d.device_id for d in auto] == [d.device_id for d in found] == [
            d.device_id for d in only_nvml
        ]
        assert "the 2 declared are not used" in caplog.text
        return
    assert "no GPUs discovered" in caplog.text  # why: no library, no driver, or no device
    assert [(d.device_id, d.kind, d.source) for d in auto] == [
        ("0", "L4", "declared"),
        ("1", "L4", "declared"),
    ]
    assert "NVML found none; using the 2 declared devices" in caplog.text
    assert only_nvml == []
    assert any(
        r.levelno == logging.WARNING and "GPU pool is empty" in r.getMessage()
        for r in caplog.records
    )
    assert build_inventory(GpuPoolConfig()) == []
