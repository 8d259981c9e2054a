"""Replica sizing as the replica really runs: the batch the live batcher reaches at a load,
the batch limit that does not throttle throughput (rule 1), the latency rule on the simulated
replica (rule 2), the capacity from the measured slowdown curve, and the simulated closed
loop the sizing check sets against a real server."""

from __future__ import annotations

import numpy as np
import pytest

from aiscale.errors import InvalidInput
from aiscale.plan import profile_from_latencies
from aiscale.plan.closed_loop import simulate_closed_loop
from aiscale.plan.profile import DiskTerms, ServerTerms
from aiscale.plan.sizing import (
    MAX_BATCH_LIMIT,
    THROUGHPUT_TOLERANCE,
    batch_at,
    served_capacity_per_s,
    simulated_p99_s,
    size_replica,
)

LATENCIES = {1: 8.0, 8: 30.0, 32: 110.0, 64: 220.0}
ALONE = profile_from_latencies("minilm", "CPU", LATENCIES)
LEVELS = (0.0, 0.5, 0.9, 0.99, 1.0)


def served_terms(**change: object) -> ServerTerms:
    """Server terms shaped like a measured minilm replica's: the slowdown 1.3 at light load
    and 1.02 at full batches (280/s), the mean overhead 2 ms alone and 20 ms at 250/s."""
    values: dict[str, object] = {
        "overhead_levels": LEVELS,
        "overhead_ms": (1.0, 2.0, 4.0, 12.0, 30.0),
        "overhead_growth_per_rps": 0.0,
        "model_slowdown": 1.2,
        "model_slowdown_per_rps": 0.0,
        "overhead_rates_per_s": (0.0, 100.0, 250.0),
        "overhead_mean_ms": (2.0, 4.0, 20.0),
        "slowdown_rates_per_s": (0.0, 100.0, 280.0),
        "slowdown_values": (1.3, 1.25, 1.02),
    }
    values.update(change)
    return ServerTerms(**values)  # type: ignore[arg-type]


SERVED = profile_from_latencies("minilm", "CPU", LATENCIES, server=served_terms())


def test_the_live_batch_grows_with_the_load_up_to_the_limit() -> None:
    """batch_at is where b = rate * S(b) settles: one at light load whatever the limit (a
    large limit costs nothing there), larger with the load, the limit past the capacity."""
    light = batch_at(ALONE, np.array([5.0]), 8)[0], batch_at(ALONE, np.array([5.0]), 128)[0]
    assert light == (1.0, 1.0)
    rates = np.array([50.0, 150.0, 250.0, 280.0])
    batches = batch_at(ALONE, rates, 64)
    assert list(batches) == sorted(batches) and batches[0] == 1.0
    for rate, batch in zip(rates, batches, strict=True):
        assert batch == pytest.approx(min(max(rate * ALONE.mean_latency_s(batch), 1.0), 64))
    assert batch_at(ALONE, np.array([400.0]), 64)[0] == 64.0  # past the capacity: full
    assert simulated_p99_s(ALONE, 8, 0.01, 5.0) == simulated_p99_s(ALONE, 128, 0.01, 5.0)


@pytest.mark.parametrize("slo_ms", [500.0, 100.0, 60.0])
def test_the_batch_limit_is_the_smallest_within_one_percent_of_the_best(slo_ms: float) -> None:
    """Rule 1: among batches whose one full batch fits the SLO, the smallest whose full
    capacity is within 1% of the best: larger ones would add under 1% of throughput."""
    sized = size_replica(ALONE, slo_ms)
    budget_s = slo_ms / 1000.0 - sized.max_batch_delay_s
    fitting = [b for b in range(1, MAX_BATCH_LIMIT + 1) if ALONE.latency_s(b) <= budget_s]
    best = max(served_capacity_per_s(ALONE, b) for b in fitting)
    chosen = sized.max_batch_size
    assert chosen in fitting
    assert sized.full_capacity_per_s >= (1 - THROUGHPUT_TOLERANCE) * best
    assert all(
        served_capacity_per_s(ALONE, b) < (1 - THROUGHPUT_TOLERANCE) * best
        for b in range(1, chosen)
    )


@pytest.mark.parametrize(("slo_ms", "is_limited"), [(500.0, False), (100.0, True)])
def test_the_planned_capacity_keeps_the_simulated_p99_within_the_slo(
    slo_ms: float, is_limited: bool
) -> None:
    """Rule 2: the planned rate is 0.7 of the full capacity unless the simulated replica's
    p99 misses the SLO there; then the highest rate that meets it (20% more misses), and
    the utilisation reported is the lower one."""
    sized = size_replica(SERVED, slo_ms)
    p99_s = simulated_p99_s(SERVED, sized.max_batch_size, 0.01, sized.capacity_per_s)
    assert p99_s <= slo_ms / 1000.0
    assert sized.planned_p99_ms == pytest.approx(p99_s * 1000.0)
    assert sized.is_latency_limited is is_limited
    if is_limited:
        assert sized.target_utilization < 0.7
        more = simulated_p99_s(SERVED, sized.max_batch_size, 0.01, 1.2 * sized.capacity_per_s)
        assert more > slo_ms / 1000.0
    else:
        assert sized.target_utilization == pytest.approx(0.7)
    assert sized.planned_batch == pytest.approx(sized.batch_at(sized.capacity_per_s))


def test_the_capacity_follows_the_slowdown_measured_at_full_batches() -> None:
    """With the measured slowdown curve the full capacity solves c = b / (latency(b) *
    slowdown(c)) and lands on the full-batch point (1.02 at 280/s), not on the light-load
    slowdown (1.3) a line through small batches would extend."""
    capacity = served_capacity_per_s(SERVED, 64)
    latency = SERVED.mean_latency_s(64)
    assert capacity == pytest.approx(64 / (latency * float(SERVED.server.slowdown(capacity))))  # type: ignore[union-attr]
    assert capacity == pytest.approx(64 / (latency * 1.02), rel=1e-6)
    assert capacity > 64 / (latency * 1.3) * 1.2


def test_an_slo_one_request_alone_cannot_meet_says_which_part() -> None:
    """A disk that stalls 10% of the time for up to 800 ms puts one request's p99 past a
    500 ms SLO: refused naming the SLO and the capture commit's share; a fixed batch (as
    aiscale serve runs it) is still sized, the SLO only scoring."""
    disk = DiskTerms(LEVELS, (0.3, 0.5, 0.9, 2.0, 5.0), 0.2, (400.0, 600.0, 800.0))
    stalling = profile_from_latencies("minilm", "CPU", LATENCIES, server=served_terms(disk=disk))
    with pytest.raises(InvalidInput) as error:
        size_replica(stalling, 500.0)
    assert error.value.field == "slo_p99_ms" and "the capture commit" in error.value.message
    fixed = size_replica(stalling, 500.0, max_batch_size=64)
    assert fixed.max_batch_size == 64 and fixed.capacity_per_s > 0


def test_the_closed_loop_fills_batches_and_serves_the_full_capacity() -> None:
    """Without server terms 64 clients keep batches of 64 from the start (the 64 first
    requests arrive together and are batched together, none carried a cycle) and get the
    full capacity; one client gets one request per batch of one; the same seed gives the
    same figures."""
    full = simulate_closed_loop(ALONE, 64, duration_s=10.0)
    assert full.mean_batch == 64.0
    assert full.p99_ms <= ALONE.latency_s(64) * 1000.0 * 1.001  # nobody waits two batches
    assert full.throughput_per_s == pytest.approx(served_capacity_per_s(ALONE, 64), rel=0.03)
    one = simulate_closed_loop(ALONE, 1, duration_s=10.0)
    assert one.mean_batch == 1.0
    assert one.throughput_per_s == pytest.approx(1 / ALONE.latency_s(1), rel=0.01)
    assert simulate_closed_loop(SERVED, 64, duration_s=10.0) == simulate_closed_loop(
        SERVED, 64, duration_s=10.0
    )
    with pytest.raises(InvalidInput) as error:
        simulate_closed_loop(ALONE, 0)
    assert error.value.field == "concurrency"


def test_a_batch_answered_together_comes_back_together() -> None:
    """The requests of one batch share their time outside the replica (one group commit,
    the same gateway load), so however widely the overhead spreads (here up to 300 ms at
    full load, 30 times the batch delay) 64 clients still form batches of 64; the cycle is
    the batch plus the mean outside time, so the throughput falls below the full capacity
    by that much and no more."""
    server = SERVED.server
    assert server is not None
    served = simulate_closed_loop(SERVED, 64, duration_s=20.0)
    assert served.mean_batch == 64.0
    rate = served.throughput_per_s
    outside_s = server.mean_overhead_s * float(server.overhead_scale(rate))
    batch_s = SERVED.mean_latency_s(64) * float(server.slowdown(rate))
    assert rate == pytest.approx(64 / (batch_s + outside_s), rel=0.05)
    assert rate < served_capacity_per_s(SERVED, 64)
