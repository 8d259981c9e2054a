"""The autoscaler on a real gateway with real replica processes: it shares the one scale path
with the monitor (no undoing each other) and with the GPU pool (every replica counted)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aiscale.contracts.clock import ManualClock
from aiscale.contracts.fleet import FleetSnapshot
from aiscale.gpus import GpuDemand, GpuPoolConfig
from aiscale.monitor.config import MonitorConfig
from aiscale.serving import BatchingSettings, Gateway, GatewayApp, GatewaySettings, start_in_thread
from aiscale.serving.lane import AutoscalingSettings
from aiscale.serving.server import ThreadedServer
from tests.serving.conftest import python_spec
from tests.serving.loadgen import SteadyLoad

TEXT: dict[str, object] = {
    "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]
}
NO_MONITOR = MonitorConfig.model_validate({"enabled": False})


async def wait_for_wanted(
    gateway: Gateway, name: str, wanted: int, timeout_s: float
) -> FleetSnapshot:
    """Poll the fleet until the version wants ``wanted`` replicas, has them ready and the
    scale is recorded; replica processes start and stop in real time, whatever the control
    loops' clock says."""
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = gateway.snapshot(name)[0]
        record = snapshot.last_scale
        is_recorded = record is not None and record.num_after == wanted
        if snapshot.num_wanted == wanted and snapshot.num_ready == wanted and is_recorded:
            return snapshot
        assert time.monotonic() < deadline, snapshot
        await asyncio.sleep(0.05)  # a poll interval, not a readiness guess


def test_the_monitor_scale_up_is_a_floor_the_autoscaler_keeps_for_its_hold() -> None:
    """The monitor's ``scale_up`` (``Fleet.scale`` with a ``monitor:`` cause) is not undone on
    the autoscaler's next tick, even when the policy's downscale delay was already running
    out: the count stays for the hold (the policy's downscale delay) after the monitor set
    it, and only later does the autoscaler bring it down, by the same path, with its cause."""
    autoscaling = AutoscalingSettings(
        "reactive",
        1.0,
        {"min_replicas": 1, "max_replicas": 4, "upscale_delay_s": 0.0, "downscale_delay_s": 20.0},
    )
    spec = python_spec(
        "slow", "Slow", model_config={"delay_ms": 1}, autoscaling=autoscaling, replicas=2
    )

    async def scenario() -> None:
        clock = ManualClock()
        gateway = Gateway(
            GatewaySettings(drain_timeout_s=5.0),
            [spec],
            metrics_registry=CollectorRegistry(),
            monitor=NO_MONITOR,
            clock=clock,
        )
        await gateway.start()
        try:
            for _ in range(15):  # idle at two: a downscale to one is due in 5 s more
                await clock.advance(1.0)
            await gateway.scale("slow", 3, cause="monitor: scale_up on p99 burn")
            monitor_at_s = clock.monotonic()
            for _ in range(19):
                await clock.advance(1.0)
            snapshot = await wait_for_wanted(gateway, "slow", 3, 30.0)
            assert snapshot.last_scale is not None and snapshot.last_scale.source == "monitor"
            for _ in range(45):  # the hold ends at 20 s; the policy's own delay follows
                await clock.advance(1.0)
            snapshot = await wait_for_wanted(gateway, "slow", 1, 30.0)
            assert snapshot.last_scale is not None
            assert snapshot.last_scale.source == "autoscaler", snapshot.last_scale
            assert snapshot.last_scale.at_s >= monitor_at_s + 20.0
        finally:
            await gateway.stop()

    asyncio.run(scenario())


@pytest.fixture
def gpu_server() -> Iterator[ThreadedServer]:
    """A gateway whose pool declares two 24 GB devices, team ``nlp`` allowed both; its one
    deployment wants one whole GPU per replica and is autoscaled from 1 to 2."""
    autoscaling = AutoscalingSettings(
        "reactive",
        0.2,
        {
            "target_ongoing_requests": 1.0,
            "min_replicas": 1,
            "max_replicas": 2,
            "upscale_delay_s": 0.2,
            "downscale_delay_s": 600.0,
        },
    )
    spec = python_spec(
        "slow",
        "Slow",
        model_config={"delay_ms": 100},
        autoscaling=autoscaling,
        batching=BatchingSettings(max_batch_size=1, max_batch_delay_s=0.0),
        gpu=GpuDemand(1, team="nlp"),
    )
    pool = GpuPoolConfig.model_validate(
        {
            "discovery": "declared",
            "devices": [{"kind": "L4", "memory_mb": 24_576, "count": 2}],
            "teams": [{"name": "nlp", "max_gpus": 2}],
        }
    )
    gateway = Gateway(
        GatewaySettings(drain_timeout_s=5.0),
        [spec],
        metrics_registry=CollectorRegistry(),
        monitor=NO_MONITOR,
        gpus=pool,
    )
    server = start_in_thread(GatewayApp(gateway))
    yield server
    server.stop()


def test_an_autoscaled_replica_holds_a_gpu_the_pool_counts(gpu_server: ThreadedServer) -> None:
    """A load step makes the autoscaler add a replica to a GPU deployment; the replica's
    device comes from the pool (a reservation on the scale path), so the pool shows both
    devices held by the deployment and the team using two GPUs."""
    url = gpu_server.url

    def held() -> tuple[list[str], float]:
        pool = httpx.get(f"{url}/admin/gpus").json()
        holders = [h["holder"] for d in pool["devices"] for h in d["holders"]]
        (team,) = [t for t in pool["teams"] if t["team"] == "nlp"]
        return holders, float(team["used"]["gpus"])

    assert held() == (["slow/1"], 1.0)
    deadline = time.monotonic() + 60
    with SteadyLoad(f"{url}/v2/models/slow/infer", TEXT, num_threads=4) as load:
        while httpx.get(f"{url}/admin/deployments/slow").json()["replicas"]["ready"] < 2:
            assert time.monotonic() < deadline, "the autoscaler never added a replica"
            time.sleep(0.05)  # a poll interval, not a readiness guess
    assert set(load.statuses) == {200}, load.messages[:3]
    assert held() == (["slow/1", "slow/1"], 2.0)
    metrics = httpx.get(f"{url}/metrics").text
    assert (
        'aiscale_autoscaler_decisions_total{deployment="slow",direction="up",version="1"}'
        in metrics
    )
