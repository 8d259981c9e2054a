"""The Ray runtime on a real two-node Ray cluster on this machine (``ray.cluster_utils``).

One cluster serves the whole module (starting one costs ~15 s on two cores): a head node and
a worker node with 2 logical CPUs each, and node health checks tuned so that a lost node is
noticed in about a second and a half instead of Ray's default ~30 s. The node-loss test runs
last because it removes the worker node.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiscale.replicas.ray_pool import RayPlacement, connect, disconnect
from aiscale.serving import BatchingSettings, GatewaySettings
from aiscale.serving.server import ThreadedServer
from tests.polling import wait_for
from tests.serving.conftest import python_spec, start_gateway
from tests.serving.loadgen import SteadyLoad

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
AISCALE = [sys.executable, "-m", "aiscale.cli"]
TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
#: Node health checks every 500 ms, dead after 3 misses (Ray's default: 3 s and 5 misses).
FAST_NODE_DEATH = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
    "health_check_initial_delay_ms": 0,
}



def replicas_of(url: str, name: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/admin/deployments/{name}", timeout=10).json()["replicas"])


def session_processes(session_name: str) -> list[int]:
    """Live processes of one Ray session (raylet, GCS, workers carry its name in argv)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if session_name.encode() in argv and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two Ray nodes; this test process joins as the driver the gateways share."""
    started = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": False,
            "_system_config": FAST_NODE_DEATH,
        },
    )
    session_name = started.head_node.session_name
    try:
        started.add_node(num_cpus=2)
        started.wait_for_nodes()
        connect(started.address)
        yield started
    finally:
        disconnect()
        started.shutdown()
        # Nothing of the cluster may outlive the module and disturb the rest of the suite.
        wait_for(lambda: not session_processes(session_name), 30, "Ray processes exit")


@pytest.fixture
def gateways() -> Iterator[list[ThreadedServer]]:
    started: list[ThreadedServer] = []
    yield started
    for server in started:
        server.stop()


def node_ids(cluster: Cluster) -> tuple[str, str]:
    head, worker = cluster.head_node.node_id, cluster.list_all_nodes()[1].node_id
    return str(head), str(worker)


def test_replicas_spread_over_nodes_and_serve(
    cluster: Cluster, gateways: list[ThreadedServer]
) -> None:
    """Two replicas land on two different Ray nodes; batched answers come back through Ray;
    scaling down under load fails no request."""
    spec = python_spec(
        "echo",
        "Echo",
        replicas=2,
        batching=BatchingSettings(max_batch_size=8, max_batch_delay_s=0.005),
        placement=RayPlacement(address=cluster.address, num_cpus=1),
    )
    server = start_gateway(spec, settings=GatewaySettings(drain_timeout_s=5.0))
    gateways.append(server)
    url = server.url
    replicas = replicas_of(url, "echo")
    assert replicas["ready"] == 2
    assert set(replicas["nodes"]) == set(node_ids(cluster)), replicas

    texts = [f"t{i}" for i in range(64)]
    with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda text: client.post(
                    f"{url}/v2/models/echo/infer",
                    json={"inputs": [{**TEXT["inputs"][0], "data": [text]}]},
                ),
                texts,
            )
        )
    assert [a.status_code for a in answers] == [200] * len(texts)
    assert [a.json()["outputs"][0]["data"][0] for a in answers] == texts
    metrics = httpx.get(f"{url}/metrics").text
    batches = r'aiscale_batcher_batch_size_count\{deployment="echo",version="1"\} [1-9]'
    assert re.search(batches, metrics), metrics

    with SteadyLoad(f"{url}/v2/models/echo/infer", TEXT, num_threads=4) as load:
        wait_for(lambda: sum(load.statuses.values()) >= 20, 30, "load running")
        down = httpx.post(f"{url}/admin/deployments/echo/scale", json={"replicas": 1}, timeout=60)
        assert down.status_code == 200 and down.json()["replicas"]["ready"] == 1
        count = sum(load.statuses.values())
        wait_for(lambda: sum(load.statuses.values()) >= count + 20, 30, "load after scaling")
    assert set(load.statuses) == {200}, (load.statuses, load.messages[:3])


def test_serve_cli_runs_replicas_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """``aiscale serve --runtime ray --ray-address`` places its replicas on the cluster's
    nodes with the requested CPUs, answers, and ends its actors when it stops on SIGTERM."""
    process = subprocess.Popen(
        [
            *AISCALE,
            "serve",
            "tests.models:Echo",
            "--runtime",
            "ray",
            "--ray-address",
            cluster.address,
            "--replicas",
            "2",
            "--cpus",
            "0.5",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        url = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not url:
            line = process.stdout.readline()
            if not line:
                break
            found = re.search(r"aiscale serving on (http://\S+)", line)
            url = found.group(1) if found else ""
        assert url, process.communicate(timeout=30)[1][-2000:]
        answer = httpx.post(f"{url}/v2/models/echo/infer", json=TEXT, timeout=30)
        assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == ["x"]
        info = httpx.get(f"{url}/admin/deployments/echo", timeout=10).json()
        assert info["ray"]["num_cpus"] == 0.5 and info["replicas"]["ready"] == 2
        assert set(info["replicas"]["nodes"]) == set(node_ids(cluster)), info
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        assert "Traceback" not in errors, errors[-2000:]
        # Its actors ended with it: the cluster's 4 CPUs are all free again.
        wait_for(lambda: ray.available_resources().get("CPU") == 4.0, 30, "actors released")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


def test_node_loss_under_load_loses_no_request(
    cluster: Cluster, gateways: list[ThreadedServer]
) -> None:
    """Killing every process of the worker node under steady load: each request is answered
    200 (the lost replica's batch is retried on the other one) and the lost replica comes
    back on the surviving node."""
    head, worker = node_ids(cluster)
    spec = python_spec(
        "slow",
        "Slow",
        model_config={"delay_ms": 20},
        replicas=2,
        batching=BatchingSettings(max_batch_size=4, max_batch_delay_s=0.005, max_retries=1),
        placement=RayPlacement(address=cluster.address, num_cpus=1),
    )
    server = start_gateway(spec, settings=GatewaySettings(drain_timeout_s=5.0))
    gateways.append(server)
    url = server.url
    assert set(replicas_of(url, "slow")["nodes"]) == {head, worker}
    with SteadyLoad(f"{url}/v2/models/slow/infer", TEXT, num_threads=8) as load:
        wait_for(lambda: sum(load.statuses.values()) >= 40, 30, "load running")
        cluster.remove_node(cluster.list_all_nodes()[1], allow_graceful=False)
        wait_for(
            lambda: (lambda r: r["ready"] == 2 and set(r["nodes"]) == {head})(
                replicas_of(url, "slow")
            ),
            45,
            "replica replaced on the head node",
        )
        count = sum(load.statuses.values())
        wait_for(lambda: sum(load.statuses.values()) >= count + 40, 30, "load after the loss")
    assert set(load.statuses) == {200}, (load.statuses, load.messages[:3])
    metrics = httpx.get(f"{url}/metrics").text
    assert 'aiscale_replica_restarts_total{deployment="slow",version="1"} 1.0' in metrics
