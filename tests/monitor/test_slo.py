"""SLO error budgets and multiwindow, multi-burn-rate alerts (SRE workbook ch. 5)."""

from __future__ import annotations

import pytest

from aiscale.errors import ConfigError, InvalidInput
from aiscale.monitor.slo import (
    DAY_S,
    HOUR_S,
    RollingCounts,
    Slo,
    SloStatus,
    WindowCounts,
    evaluate,
)

MIN_S = 60.0
REQ_PER_MIN = 600.0
#: Three clean days first, so every window (up to the ticket's 3 d) is full of history.
CLEAN_MINUTES = int(3 * DAY_S / MIN_S)


def _run(slo: Slo, error_rate_at: list[float], every_s: float = MIN_S) -> list[SloStatus]:
    """Feed one minute of traffic per entry (REQ_PER_MIN requests, the given share bad) and
    evaluate the SLO at the end of each minute."""
    counts = RollingCounts(max_window_s=slo.window_s, bucket_s=MIN_S)
    out = []
    for i, err in enumerate(error_rate_at):
        t = i * MIN_S
        counts.add(t, REQ_PER_MIN, REQ_PER_MIN * (1 - err))
        if (i + 1) % round(every_s / MIN_S) == 0:
            out.append(evaluate(slo, counts.counts(t, slo.windows_s), t))
    return out


def test_error_burst_pages_within_the_short_window_and_clears_after() -> None:
    """2 % errors for 10 min against 99.99 % burn 200x: the 1 h / 5 min rule pages once the
    hour's burn passes 14.4 (after 4.32 min) and clears once the 5 min window drops below
    14.4 (under 5 min after the burst). No ticket opens: a day of history is not 3 days bad."""
    slo = Slo("chat", "availability", 0.9999, window_s=30 * DAY_S)
    start = CLEAN_MINUTES
    statuses = _run(slo, [0.0] * start + [0.02] * 10 + [0.0] * 60)
    paging = [i for i, s in enumerate(statuses) if s.is_paging]
    assert paging, "the burst never paged"
    # Status i is taken after minute i: 5 burst minutes (i = start + 4) burn 16.7x.
    assert paging[0] == start + 4  # within the short window
    assert max(paging) <= start + 10 + 4  # cleared within 5 min of the end of the burst
    assert paging == list(range(paging[0], max(paging) + 1))  # one episode
    assert not any(s.is_ticketing for s in statuses)


def test_same_burst_does_not_page_a_looser_slo() -> None:
    """Against 99.9 % the same burst burns 20x for 10 min: 3.3x over the hour, so no page
    (the workbook's trade-off: brief bursts spend budget without waking anyone)."""
    slo = Slo("chat", "availability", 0.999)
    statuses = _run(slo, [0.0] * CLEAN_MINUTES + [0.02] * 10 + [0.0] * 30)
    assert not any(s.alerts for s in statuses)
    assert statuses[-1].burn_rates[HOUR_S] == pytest.approx(20 * 10 / 60, rel=0.02)


def test_slow_burn_opens_a_ticket_only() -> None:
    """A steady 1.2x burn (0.12 % errors against 99.9 %) opens a ticket once the 3 d and 6 h
    windows exceed 1x and never pages."""
    slo = Slo("chat", "availability", 0.999)
    statuses = _run(slo, [0.0012] * int(4 * DAY_S / MIN_S), every_s=HOUR_S)
    assert any(s.is_ticketing for s in statuses)
    assert not any(s.is_paging for s in statuses)
    assert statuses[-1].severity == "ticket"
    assert statuses[-1].burn_rates[3 * DAY_S] == pytest.approx(1.2)


def test_six_hour_rule_pages_a_moderate_sustained_burn() -> None:
    """A 7x burn held for 8 h pages through the 6 h / 30 min rule, not the 1 h / 5 min one."""
    slo = Slo("chat", "availability", 0.999)
    statuses = _run(slo, [0.007] * int(8 * HOUR_S / MIN_S), every_s=HOUR_S)
    last = statuses[-1]
    assert last.is_paging
    assert {(a.rule.long_window_s, a.rule.factor) for a in last.alerts} >= {(6 * HOUR_S, 6.0)}
    assert all(a.rule.factor != 14.4 for a in last.alerts)


@pytest.mark.parametrize(
    ("total", "good", "objective", "remaining"),
    [(1000.0, 1000.0, 0.99, 1.0), (1000.0, 995.0, 0.99, 0.5), (1000.0, 990.0, 0.99, 0.0),
     (1000.0, 980.0, 0.99, -1.0), (0.0, 0.0, 0.999, 1.0)],
)
def test_budget_remaining(total: float, good: float, objective: float, remaining: float) -> None:
    """Remaining budget = 1 - error rate / (1 - objective); an empty window burns nothing."""
    slo = Slo("d", "availability", objective)
    counts = {w: WindowCounts(total, good) for w in slo.windows_s}
    status = evaluate(slo, counts, 0.0)
    assert status.budget_remaining == pytest.approx(remaining)
    assert all(b == pytest.approx(1 - remaining) for b in status.burn_rates.values())


def test_latency_percentile_slo_is_a_share_under_threshold() -> None:
    """'p99 under 300 ms' is 99 % of requests under 300 ms; 2 % slow requests burn 2x."""
    slo = Slo.latency_percentile("chat", 99, 0.3)
    assert slo.kind == "latency" and slo.objective == pytest.approx(0.99)
    status = evaluate(slo, {w: WindowCounts(100.0, 98.0) for w in slo.windows_s}, 0.0)
    assert status.burn_rates[slo.window_s] == pytest.approx(2.0)
    assert status.severity == "ticket"


def test_rolling_counts_match_direct_sums() -> None:
    """Window counts are the sums of the buckets inside the window, with old ones expired."""
    counts = RollingCounts(max_window_s=3600.0, bucket_s=60.0)
    for i in range(200):
        counts.add(i * 60.0, float(i), float(i) / 2)
    now = 199 * 60.0
    got = counts.counts(now, [300.0, 3600.0])
    assert got[300.0].total == sum(range(195, 200))
    assert got[3600.0].total == sum(range(140, 200))
    assert got[3600.0].good == pytest.approx(sum(range(140, 200)) / 2)


def test_bad_declarations_and_inputs_are_refused() -> None:
    """Objectives outside (0, 1), a latency SLO without threshold, missing windows, more good
    than total: each raises with the field named."""
    with pytest.raises(ConfigError) as exc:
        Slo("d", "availability", 1.0)
    assert exc.value.field == "objective"
    with pytest.raises(ConfigError) as exc:
        Slo("d", "latency", 0.99)
    assert exc.value.field == "latency_threshold_s"
    slo = Slo("d", "availability", 0.99)
    with pytest.raises(InvalidInput) as bad_counts:
        evaluate(slo, {slo.window_s: WindowCounts(1.0, 1.0)}, 0.0)
    assert bad_counts.value.field == "counts_by_window"
    with pytest.raises(InvalidInput):
        WindowCounts(1.0, 2.0)
