"""The configuration tree: file, then AISCALE_* variables, then flags; bad input named by path."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiscale.config import load_config, parse_config
from aiscale.errors import ConfigError
from aiscale.serving.lane import VersionLane
from aiscale.serving.metrics import GatewayMetrics
from aiscale.serving.specs import spec_from_config


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    """A flag beats a variable, which beats the file."""
    path = tmp_path / "aiscale.yaml"
    path.write_text(
        "server:\n  port: 9000\n  host: 127.0.0.1\ndeployments:\n  - {name: m, model: m}\n"
    )
    assert load_config(path, environ={}).server.port == 9000
    assert load_config(path, environ={"AISCALE_PORT": "9100"}).server.port == 9100
    config = load_config(path, environ={"AISCALE_PORT": "9100"}, server_overrides={"port": 9200})
    assert config.server.port == 9200 and config.deployments[0].replicas == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"server": {"prot": 1}}, "server.prot"),
        (
            {"deployments": [{"name": "m", "model": "m", "batching": {"max_batch_size": 0}}]},
            "deployments.0.batching.max_batch_size",
        ),
        ({"deployments": [{"name": "Bad Name", "model": "m"}]}, "deployments.0.name"),
        (
            {"deployments": [{"name": "m", "model": "m", "autoscaling": {"policy": "magic"}}]},
            "deployments.0.autoscaling.policy",
        ),
    ],
)
def test_bad_configuration_names_the_field(data: dict[str, object], field: str) -> None:
    """Unknown keys and bad values reject the whole tree, naming the dotted path."""
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.field == field


def test_bad_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "aiscale.yaml"
    path.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, environ={})


def test_autoscaling_knobs_are_checked_by_the_policy() -> None:
    """Autoscaling settings reach the lane; an unknown policy knob is a ConfigError naming it."""
    from datetime import UTC, datetime

    from prometheus_client import CollectorRegistry

    from aiscale.registry import VersionRecord

    version = VersionRecord(
        "m", "1", "python", "tests.models:Echo", None, {}, {}, None, datetime.now(UTC)
    )

    config = parse_config(
        {
            "deployments": [
                {
                    "name": "m",
                    "model": "m",
                    "autoscaling": {"policy": "reactive", "knobs": {"max_replicas": 4, "bogus": 1}},
                }
            ]
        }
    ).deployments[0]
    spec = spec_from_config(config, version)
    assert spec.autoscaling is not None and spec.autoscaling.knobs["max_replicas"] == 4
    with pytest.raises(ConfigError, match="bogus"):
        VersionLane(spec, GatewayMetrics(CollectorRegistry()))
