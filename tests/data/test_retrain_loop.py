"""The retraining loop end to end, as a user runs it: a real ``aiscale serve`` of a
scikit-learn model captures live traffic whose inputs drift away from the training data;
``aiscale data retrain`` sees the drift, exports the traffic with its feedback, runs a real
trainer command, registers its model as a new version and starts a canary rollout, which the
server's rollout controller promotes while traffic keeps flowing. A failing trainer or a bad
retraining config gives one clear error and registers nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from aiscale.cli import app
from aiscale.registry import SqlRegistry

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
AISCALE = [sys.executable, "-m", "aiscale.cli"]
TRAINER = f"{sys.executable} -m tests.data.sklearn_trainer {{dataset}} {{output}}"
#: A canary plan fast enough for a test: two steps, small samples, frequent looks.
CANARY = {"steps": [50, 100], "interval_s": 0.3, "min_step_duration_s": 0.5, "min_requests": 40}


@dataclass
class Served:
    url: str
    data_dir: Path
    reference: Path
    process: subprocess.Popen[str]


def fit_reference(data_dir: Path) -> tuple[Path, Path]:
    """The first model (fitted on centred data) and its training data as Parquet."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, size=(400, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    model_path = data_dir.parent / "clf.joblib"
    joblib.dump(LogisticRegression().fit(x, y), model_path)
    reference = data_dir.parent / "train.parquet"
    pq.write_table(pa.table({"input_0": x[:, 0], "input_1": x[:, 1], "label": y}), reference)
    return model_path, reference


def wait_ready(url: str, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling a health endpoint, not waiting for a guess
    raise AssertionError(f"{url} not ready after {deadline_s} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module (its start is most of a test's time on a loaded machine):
    the failure test runs first and leaves the registry and the rollouts as it found them."""
    data_dir = tmp_path_factory.mktemp("retrain") / "state"
    data_dir.mkdir()
    model_path, reference = fit_reference(data_dir)
    process = subprocess.Popen(
        [*AISCALE, "serve", str(model_path), "--name", "clf", "--port", "0",
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    url = ""
    for line in process.stdout:
        found = re.search(r"aiscale serving on (http://\S+)", line)
        if found:
            url = found.group(1)
            break
    if not url:
        process.kill()
        raise AssertionError(f"server did not start: {process.communicate(timeout=30)[1]}")
    try:
        wait_ready(url)
        yield Served(url, data_dir, reference, process)
    finally:
        process.terminate()
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def infer_body(row: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64",
                        "data": [float(row[0]), float(row[1])]}]}  # fmt: skip


def send_drifted_traffic(url: str, num: int, seed: int) -> list[str]:
    """``num`` requests whose inputs are shifted by 1.5 standard deviations from training,
    each with feedback carrying its true label; returns the versions that answered."""
    rng = np.random.default_rng(seed)
    versions = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i, row in enumerate(rng.normal(1.5, 1.0, size=(num, 2))):
            answer = client.post(
                "/v2/models/clf/infer", json=infer_body(row), headers={"x-user-id": f"u{i}"}
            )
            assert answer.status_code == 200, answer.text
            versions.append(answer.headers["x-aiscale-version"])
            label = str(int(row[0] + row[1] > 0))
            given = client.post(
                "/v1/feedback",
                json={"request_id": answer.headers["x-request-id"], "label": label},
            )
            assert given.status_code == 200, given.text
    return versions


class Traffic:
    """Live traffic in a background thread (many users, so the split reaches both versions)
    until stopped; counts answers by version and any failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.by_version: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        rng = np.random.default_rng(5)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                row = rng.normal(1.5, 1.0, size=2)
                answer = client.post(
                    "/v2/models/clf/infer", json=infer_body(row), headers={"x-user-id": f"v{i}"}
                )
                i += 1
                if answer.status_code != 200:
                    self.failures.append(f"{answer.status_code} {answer.text[:200]}")
                    continue
                version = answer.headers["x-aiscale-version"]
                self.by_version[version] = self.by_version.get(version, 0) + 1


def retrain(served: Served, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AISCALE, "data", "retrain", "--deployment", "clf", "--url", served.url,
         "--data-dir", str(served.data_dir), *args],
        capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
        env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip


def versions_of(data_dir: Path) -> list[str]:
    registry = SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}")
    try:
        return [str(v.version) for v in registry.list_versions("clf")]
    finally:
        registry.close()


def rollout_of(url: str) -> tuple[int, Any]:
    answer = httpx.get(f"{url}/admin/deployments/clf/rollout", timeout=30)
    return answer.status_code, answer.json()


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_a_failing_trainer_or_bad_config_is_a_clear_error_and_registers_nothing(
    served: Served, tmp_path: Path
) -> None:
    """Trainer exits non-zero, writes nothing, config has an unknown key or names no
    importable trainer: exit 1, one line naming the cause, no traceback, no new version, no
    rollout."""
    send_drifted_traffic(served.url, 20, seed=2)
    versions_before = versions_of(served.data_dir)
    rollout_before = rollout_of(served.url)
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text(yaml.safe_dump({"triggers": {"drfit": {"reference": "x"}}}))
    cases = [
        (("--force", "--command", f"{TRAINER} --fail"),
         "the retraining command exited with status 2; see"),
        (("--force", "--command", f"{sys.executable} -c pass"),
         "the trainer finished but wrote nothing"),
        (("--force", "--command", "no-such-trainer-xyz {dataset}"),
         "the retraining command 'no-such-trainer-xyz' was not found"),
        (("--force",), "no trainer: configure command or callable"),
        (("--config", str(bad_key), "--command", TRAINER), "triggers.drfit"),
        (("--config", str(tmp_path / "missing.yaml")), "does not exist"),
    ]  # fmt: skip
    for args, message in cases:
        # In process (the same Typer app as the command line): no interpreter start per case.
        result = CliRunner().invoke(
            app,
            ["data", "retrain", "--deployment", "clf", "--url", served.url,
             "--data-dir", str(served.data_dir), *args],
            env={"COLUMNS": "300"},
        )  # fmt: skip
        text = one_line(result.output)
        assert result.exit_code == 1, (args, text)
        assert result.exception is None or isinstance(result.exception, SystemExit), text
        assert message in text, (args, text)
        assert "Traceback" not in text, (args, text)
    logs = [p.read_text() for p in (served.data_dir / "retrain" / "clf").glob("*/train.log")]
    assert any("the labels are inconsistent" in log for log in logs), logs
    assert versions_of(served.data_dir) == versions_before
    assert rollout_of(served.url) == rollout_before


def test_drift_in_live_traffic_retrains_and_the_new_version_is_promoted_as_a_canary(
    served: Served, tmp_path: Path
) -> None:
    """Drift injected into live traffic → retraining triggered by drift → version 2
    registered with its reasons → canary through the rollout controller → promoted."""
    assert set(send_drifted_traffic(served.url, 120, seed=1)) == {"1"}
    config = tmp_path / "retrain.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "triggers": {"drift": {"reference": str(served.reference), "current": "10m"}},
                "dataset": {"since": "1h", "with_feedback": True, "labeled_only": True},
                "rollout": {**CANARY, "alpha": 0.01},
            }
        )
    )
    with Traffic(served.url) as traffic:
        finished = retrain(served, "--config", str(config), "--command", TRAINER, "--wait", "60")
    assert finished.returncode == 0, finished.stderr + finished.stdout
    out = one_line(finished.stdout)
    assert re.search(r"retrained \(drift in [^)]*input_0", out), out
    assert "-> version 2, rollout promoted" in out
    assert not traffic.failures, traffic.failures[:3]
    assert traffic.by_version.get("2", 0) > 0, traffic.by_version  # the canary served

    # The new version is registered with where it came from, and it now serves everyone.
    registry = SqlRegistry.open(f"sqlite:///{served.data_dir / 'registry.db'}")
    try:
        versions = registry.list_versions("clf")
        assert [str(v.version) for v in versions] == ["1", "2"]
        new = versions[1]
        assert new.runtime == "sklearn" and new.metadata["retrained_from"] == "1"
        assert any("drift in" in r for r in new.metadata["reasons"])
        assert new.metadata["dataset"]["labeled"] == new.metadata["dataset"]["examples"] > 100
    finally:
        registry.close()
    described = httpx.get(f"{served.url}/admin/deployments/clf", timeout=30).json()
    assert described["version"] == "2", described
    assert set(send_drifted_traffic(served.url, 5, seed=9)) == {"2"}
    rollout = httpx.get(f"{served.url}/admin/deployments/clf/rollout", timeout=30).json()
    assert (rollout["status"], rollout["canary"]) == ("promoted", "2")
    # The cycle's files: the drift report that triggered it, the dataset and the trainer log.
    run_dir = Path(new.metadata["run_dir"])
    assert (run_dir / "drift" / "report.html").is_file()
    assert (run_dir / "dataset" / "datasheet.json").is_file()
    assert "fitted on" in (run_dir / "train.log").read_text()
