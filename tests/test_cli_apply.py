"""``aiscale apply -f`` and ``aiscale get`` as a user runs them against a real ``aiscale serve``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.test_cli_serve import TEXT, run_cli, start_serve

Served = tuple[subprocess.Popen[str], str, Path]


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[Served]:
    """``aiscale serve tests.models:Echo`` (model ``echo`` version 1) plus a version 2."""
    process, url = start_serve("tests.models:Echo", "--max-batch-size", "8", data_dir=tmp_path)
    registered = run_cli(
        "models", "register", "echo", "--runtime", "python", "--uri", "tests.models:Echo",
        data_dir=tmp_path,
    )
    assert registered.returncode == 0, registered.stderr
    yield process, url, tmp_path
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


def _write(tmp_path: Path, deployments: list[dict[str, object]], name: str = "a.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"deployments": deployments}))
    return path


def _state(url: str) -> dict[str, tuple[str, int, dict[str, float], int]]:
    """name -> (primary version, wanted replicas, split weights, max batch size)."""
    found = httpx.get(f"{url}/admin/deployments", timeout=10).json()["deployments"]
    return {
        d["name"]: (
            d["version"], d["replicas"]["wanted"], d["split"]["weights"], d["max_batch_size"]
        )
        for d in found
    }


def _apply(path: Path, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return run_cli("apply", "-f", str(path), "--url", url, *flags)


def test_apply_shows_the_diff_dry_run_changes_nothing_and_a_second_apply_is_a_no_op(
    echo_server: Served,
) -> None:
    """The diff names each deployment and field; --dry-run leaves the server as it was;
    apply changes replicas, batching and the split and adds a deployment; applying the same
    file again reports no changes; `get deployments -o json` lists what runs."""
    _, url, data_dir = echo_server
    before = _state(url)
    assert before == {"echo": ("1", 1, {"1": 100.0}, 8)}
    path = _write(
        data_dir,
        [
            {
                "name": "echo", "model": "echo", "version": "1", "replicas": 2,
                "batching": {"max_batch_size": 4}, "split": {"1": 50, "2": 50},
            },
            {"name": "echo-b", "model": "echo", "version": "2"},
        ],
    )

    dry = _apply(path, url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "~ echo (change)" in dry.stdout
    assert "replicas: 1 -> 2" in dry.stdout
    assert "batching.max_batch_size: 8 -> 4" in dry.stdout
    assert "+ echo-b (add)" in dry.stdout
    assert "dry run: 1 added, 1 changed, 0 removed; nothing changed" in dry.stdout
    assert _state(url) == before

    applied = _apply(path, url)
    assert applied.returncode == 0, applied.stderr
    assert "applied: 1 added, 1 changed, 0 removed" in applied.stdout
    after = _state(url)
    assert after["echo"] == ("1", 2, {"1": 50.0, "2": 50.0}, 4)
    assert after["echo-b"][:3] == ("2", 1, {"2": 100.0})
    forced = httpx.post(
        f"{url}/v2/models/echo/infer", json=TEXT, headers={"x-aiscale-version": "2"}
    )
    assert forced.status_code == 200, forced.text

    again = _apply(path, url)
    assert again.returncode == 0, again.stderr
    assert "= echo: no changes" in again.stdout and "= echo-b: no changes" in again.stdout
    assert again.stdout.strip().endswith("no changes")
    assert _state(url) == after

    listed = run_cli("get", "deployments", "-o", "json", "--url", url)
    assert listed.returncode == 0, listed.stderr
    rows = {d["name"]: d for d in json.loads(listed.stdout)}
    assert set(rows) == {"echo", "echo-b"}
    assert rows["echo"]["replicas"]["wanted"] == 2


BAD_SECOND_ENTRIES = [
    ({"name": "b", "model": "echo", "replicas": -1}, "deployments.1.replicas", "greater"),
    ({"name": "b", "model": "echo", "colour": "red"}, "deployments.1.colour", "not permitted"),
    ({"name": "b", "model": "nope"}, "deployments.1.model", "unknown model 'nope'"),
    ({"name": "b", "model": "echo", "version": "9"}, "deployments.1.version", "'9'"),
    ({"name": "b", "model": "echo", "split": {"1": 50, "7": 50}}, "deployments.1.split.7", "'7'"),
]


def test_a_bad_file_changes_nothing_and_names_the_path(echo_server: Served) -> None:
    """A bad field or an unknown model, version or split version anywhere in the file: exit
    status 1, one line naming the dotted path, and not even the valid first entry applied."""
    _, url, data_dir = echo_server
    before = _state(url)
    for second, path, message in BAD_SECOND_ENTRIES:
        file = _write(data_dir, [{"name": "echo", "model": "echo", "replicas": 3}, second])
        result = _apply(file, url)
        assert result.returncode == 1, second
        assert path in result.stderr and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert _state(url) == before


def test_a_failure_mid_way_rolls_back_what_was_changed(echo_server: Served) -> None:
    """A version that cannot load fails the apply after earlier steps succeeded: those are
    undone (echo back to 1 replica, the new deployment gone) and the error says so."""
    _, url, data_dir = echo_server
    broken = run_cli(
        "models", "register", "broken", "--runtime", "python", "--uri", "tests.models:NoSuchClass",
        data_dir=data_dir,
    )
    assert broken.returncode == 0, broken.stderr
    before = _state(url)
    file = _write(
        data_dir,
        [
            {"name": "echo", "model": "echo", "version": "1", "replicas": 2},
            {"name": "echo-b", "model": "echo", "version": "2"},
            {"name": "broken", "model": "broken"},
        ],
    )
    result = _apply(file, url)
    assert result.returncode == 1
    assert "apply failed at broken" in result.stderr
    assert "rolled back 2 change(s)" in result.stderr
    assert "Traceback" not in result.stderr
    assert _state(url) == before


def test_prune_removes_deployments_the_file_does_not_name(echo_server: Served) -> None:
    """Without --prune a running deployment missing from the file is kept (and said so);
    with --prune it is drained and removed."""
    process, url, data_dir = echo_server
    file = _write(data_dir, [{"name": "echo-b", "model": "echo", "version": "2"}])
    kept = _apply(file, url)
    assert kept.returncode == 0, kept.stderr
    assert "? echo: running but not in the file" in kept.stdout
    assert set(_state(url)) == {"echo", "echo-b"}

    pruned = _apply(file, url, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "- echo (remove)" in pruned.stdout
    assert "applied: 0 added, 0 changed, 1 removed" in pruned.stdout
    assert set(_state(url)) == {"echo-b"}
    assert httpx.post(f"{url}/v2/models/echo/infer", json=TEXT).status_code == 404

    # A pruned deployment stays gone after a restart: its saved state went with it.
    process.terminate()
    process.communicate(timeout=60)
    restarted, url = start_serve("tests.models:Echo", "--name", "other", data_dir=data_dir)
    try:
        assert set(_state(url)) == {"echo-b", "other"}
    finally:
        restarted.terminate()
        restarted.communicate(timeout=60)
