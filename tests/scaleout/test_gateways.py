"""Three gateways on loopback sharing PostgreSQL, Redis and NATS behave as one.

A per-key rate limit holds across all three (Redis), and a rollout started through one
gateway steers all three: the split, sticky users, promote and abort (registry + leases).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiscale.registry import SqlRegistry
from tests.scaleout.conftest import Gateway, Shared, start_gateways, stop_gateways

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
SERVE_ARGS = ("m", "--version", "1", "--num-threads", "1", "--max-batch-delay-ms", "0")
#: The bound ``docs/scaleout.md`` states for a split change to reach every gateway
#: (``split_poll_s`` = 0.5 s by default, plus one registry read, with room for a busy machine).
PROPAGATION_BOUND_S = 2.0

# Three gateways with their replicas start in about 10 s on an idle 2-core machine; the
# timeout leaves room for a busy one.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]


def register_model(shared: Shared, *, rate_limit_per_s: float | None = None) -> str | None:
    """Versions 1, 2 and 3 of model ``m`` (tiny echo models); maybe a rate-limited key."""
    with SqlRegistry.open(shared.registry_url) as registry:
        for version in ("1", "2", "3"):
            registry.register_version(
                "m", runtime="python", uri="tests.models:Echo", version=version
            )
        if rate_limit_per_s is None:
            return None
        key, _ = registry.create_key("load", frozenset({"inference"}), rate_limit_per_s)
        return key


@pytest.fixture
def gateways_factory(shared: Shared, tmp_path: Path) -> Iterator[Any]:
    started: list[Gateway] = []

    def start(*extra: str, num: int = 3) -> list[Gateway]:
        gateways = start_gateways(num, shared, tmp_path, *SERVE_ARGS, *extra)
        started.extend(gateways)
        return gateways

    yield start
    stop_gateways(started)


def test_rate_limit_holds_across_three_gateways(shared: Shared, gateways_factory: Any) -> None:
    """A key limited to 20 requests/s, offered 50/s spread evenly over three gateways for
    6 s, is accepted at 20/s (within 10%) once its burst is spent; every refusal is a 429
    with Retry-After, and every decision came from the shared bucket. The answers come from the
    Redis cache on all three gateways."""
    limit = 20.0
    key = register_model(shared, rate_limit_per_s=limit)
    gateways = gateways_factory("--cache-mb", "1")
    for gateway in gateways:  # first requests connect to Redis and NATS; not part of the load
        warm = httpx.post(f"{gateway.url}/v2/models/m/infer", json=TEXT, timeout=60,
                          headers={"authorization": f"Bearer {key}"})
        assert warm.status_code == 200, warm.text
    offered_per_s, duration_s, settle_s = 50.0, 6.0, 2.0
    results = asyncio.run(
        open_loop([g.url for g in gateways], key or "", offered_per_s, duration_s)
    )
    statuses = {status for _, status, _ in results}
    alive = [g.process.poll() is None for g in gateways]
    assert statuses <= {200, 429}, (statuses, alive, [r for r in results if r[1] == -1][:3])
    assert all(retry for _, status, retry in results if status == 429)
    steady = [(at, status) for at, status, _ in results if settle_s <= at < duration_s]
    offered_rate = len(steady) / (duration_s - settle_s)
    # The client must have kept up: on a starved machine it cannot offer more than the limit.
    last_s = max(at for at, _, _ in results)
    assert offered_rate >= 1.3 * limit, (
        f"only {offered_rate:.0f}/s answered in the window ({len(results)} answered by "
        f"{last_s:.1f}s): the machine is too busy for this test"
    )
    accepted_rate = sum(1 for _, status in steady if status == 200) / (duration_s - settle_s)
    accepted_total = sum(1 for _, status, _ in results if status == 200)
    redis_errors = sum(metric(g.url, "aiscale_redis_errors_total") for g in gateways)
    print(
        f"\noffered {offered_per_s:g}/s over 3 gateways for {duration_s:g}s: accepted "
        f"{accepted_total} in all, {accepted_rate:.1f}/s after the burst (limit {limit:g}/s); "
        f"Redis errors {redis_errors:g}"
    )
    assert redis_errors == 0  # every decision was the shared bucket's
    # One answer, cached in Redis by whichever gateway computed it first, serves all three.
    hits = [metric(g.url, 'aiscale_cache_lookups_total{deployment="m",result="hit"}')
            for g in gateways]
    misses = sum(
        metric(g.url, 'aiscale_cache_lookups_total{deployment="m",result="miss"}')
        for g in gateways
    )
    assert all(h > 0 for h in hits) and misses < 0.1 * sum(hits), (hits, misses)
    assert abs(accepted_rate - limit) <= 0.1 * limit, accepted_rate


def metric(url: str, name: str) -> float:
    """The sum of a metric's samples on one gateway's ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def open_loop(
    urls: list[str], key: str, rate_per_s: float, duration_s: float
) -> list[tuple[float, int, str | None]]:
    """Send ``rate_per_s`` requests per second, round robin over ``urls``, for ``duration_s``;
    return (answer time since start, status, Retry-After) of each."""
    results: list[tuple[float, int, str | None]] = []
    headers = {"authorization": f"Bearer {key}"}
    # A fresh connection per request: on a starved machine a reused one can be closed by the
    # server's keep-alive timer while a request is on its way (a ReadError, not an answer).
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=0)
    timeout = httpx.Timeout(30.0, pool=None)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:

        async def one(url: str, at_s: float) -> None:
            try:
                response = await client.post(f"{url}/v2/models/m/infer", json=TEXT)
            except httpx.TransportError as exc:
                results.append((time.monotonic() - started, -1, repr(exc)))
                return
            # When the answer came: on a busy machine the send may lag its schedule, but an
            # admitted request is answered within moments of the bucket's decision.
            answered_s = time.monotonic() - started
            results.append((answered_s, response.status_code, response.headers.get("retry-after")))

        started = time.monotonic()
        tasks = []
        for index, url in zip(itertools.count(), itertools.cycle(urls)):
            at_s = index / rate_per_s
            if at_s >= duration_s:
                break
            delay = started + at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(url, at_s)))
        await asyncio.gather(*tasks)
    return results


def split_of(url: str) -> dict[str, float]:
    return dict(httpx.get(f"{url}/admin/deployments/m", timeout=10).json()["split"]["weights"])


def wait_split(gateways: list[Gateway], wanted: dict[str, float], timeout_s: float) -> float:
    """Seconds until every gateway serves ``wanted``; fails past ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if all(split_of(g.url) == wanted for g in gateways):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"splits {[split_of(g.url) for g in gateways]}, wanted {wanted}")


def versions_for_users(url: str, users: range) -> dict[int, str]:
    with httpx.Client(timeout=10) as client:
        return {
            user: client.post(
                f"{url}/v2/models/m/infer", json=TEXT, headers={"x-user-id": f"user{user}"}
            ).headers["x-aiscale-version"]
            for user in users
        }


def admin(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.post(f"{url}/admin/deployments/m/{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_rollout_through_one_gateway_steers_all_three(
    shared: Shared, gateways_factory: Any
) -> None:
    """A rollout started through gateway 1 reaches gateways 2 and 3 (same split, same users on
    the same versions); a promote sent to gateway 3 (not the driver) is applied by the driver
    and reaches every gateway within the bound. A second rollout, driven by gateway 2, is
    taken over by a survivor when gateway 2 is killed, and an abort sent to gateway 1 reaches
    both survivors within the bound."""
    register_model(shared)
    gateways = gateways_factory()
    first, second, third = gateways
    slow_steps = {"steps": [50, 100], "interval_s": 0.5, "min_step_duration_s": 3600}

    admin(first.url, "rollout", {"version": "2", **slow_steps})
    warm_s = wait_split(gateways, {"1": 50.0, "2": 50.0}, timeout_s=90)
    users = range(40)
    by_gateway = [versions_for_users(g.url, users) for g in gateways]
    assert set(by_gateway[1].values()) == {"1", "2"}  # both versions serve through gateway 2
    assert by_gateway[0] == by_gateway[1] == by_gateway[2]  # sticky users, on every gateway
    status = httpx.get(f"{third.url}/admin/deployments/m/rollout", timeout=10).json()
    assert (status["status"], status["canary"], status["driven_here"]) == ("running", "2", False)

    promoted = admin(third.url, "rollout/promote")
    assert promoted["status"] == "promoted"
    promote_s = wait_split(gateways, {"2": 100.0}, timeout_s=10)
    assert promote_s <= PROPAGATION_BOUND_S, promote_s
    for gateway in gateways:
        assert set(versions_for_users(gateway.url, range(10)).values()) == {"2"}

    admin(second.url, "rollout", {"version": "3", **slow_steps})
    wait_split(gateways, {"2": 50.0, "3": 50.0}, timeout_s=90)
    second.process.kill()  # the driver dies: its lease goes with its connection
    second.process.wait(timeout=30)
    survivors = [first, third]
    takeover_s = wait_driver(survivors, timeout_s=30)
    aborted = admin(first.url, "rollout/abort")
    assert aborted["status"] == "aborted"
    abort_s = wait_split(survivors, {"2": 100.0}, timeout_s=10)
    assert abort_s <= PROPAGATION_BOUND_S, abort_s
    # A follower may see the final split one look before the rollout's end: it drains then.
    for gateway in survivors:
        wait_only_version(gateway, "2", timeout_s=PROPAGATION_BOUND_S + 30.0)
    print(
        f"\nsplit reached all gateways: start (with warm-up) {warm_s:.2f}s, "
        f"promote {promote_s:.2f}s, abort {abort_s:.2f}s after the command answered; "
        f"a surviving gateway took over the rollout {takeover_s:.2f}s after its driver died"
    )


def wait_only_version(gateway: Gateway, version: str, timeout_s: float) -> None:
    """Wait until ``gateway``'s primary is ``version`` and no other version has replicas
    (the bound includes the loser's drain); fails past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = httpx.get(f"{gateway.url}/admin/deployments/m", timeout=10).json()
        if described["version"] == version and list(described["versions"]) == [version]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still {described['version']!r}, {list(described['versions'])}")
        time.sleep(0.1)


def wait_driver(gateways: list[Gateway], timeout_s: float) -> float:
    """Seconds until exactly one of ``gateways`` drives the running rollout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        views = [
            httpx.get(f"{g.url}/admin/deployments/m/rollout", timeout=10).json() for g in gateways
        ]
        is_running = all(v["status"] == "running" for v in views)
        if is_running and sum(1 for v in views if v["driven_here"]) == 1:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"no gateway took the rollout over: {views}")


def test_follower_drains_the_loser_when_the_rollout_ends_after_its_last_split(
    shared: Shared, gateways_factory: Any
) -> None:
    """The driver records the final split a moment before it marks the rollout ended. A
    gateway that reads the registry between the two (here the test is the driver, holding the
    rollout's lease, and leaves that moment open for as long as it likes) serves the final
    split at once and, once the rollout has ended, makes the winner primary and stops the
    loser's replicas, instead of keeping them running for good."""
    register_model(shared)
    (follower,) = gateways_factory(num=1)
    with SqlRegistry.open(shared.registry_url) as registry:
        leases = registry.open_leases()
        try:
            assert leases.try_acquire("m")  # this test drives: the gateway must only follow
            record = registry.rollouts.start_rollout("m", "1", "2", [50, 100])
            registry.rollouts.record_traffic("m", {"weights": {"1": 50.0, "2": 50.0}}, "step 0")
            wait_split([follower], {"1": 50.0, "2": 50.0}, timeout_s=90)
            registry.rollouts.record_traffic("m", {"weights": {"1": 100.0}}, "aborted")
            wait_split([follower], {"1": 100.0}, timeout_s=10)
            time.sleep(3 * 0.5)  # several looks (split_poll_s) while the rollout is still active
            described = httpx.get(f"{follower.url}/admin/deployments/m", timeout=10).json()
            assert sorted(described["versions"]) == ["1", "2"]  # nothing drained too early
            registry.rollouts.update_rollout(record.rollout_id, status="aborted", reason="test")
            wait_only_version(follower, "1", timeout_s=PROPAGATION_BOUND_S + 30.0)
        finally:
            leases.close()
