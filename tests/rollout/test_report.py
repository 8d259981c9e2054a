"""The A/B report: named tests and intervals that find real differences, cover the truth, and
say "not enough traffic" instead of guessing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from aiscale.contracts.histogram import latency_histogram
from aiscale.errors import InvalidInput
from aiscale.rollout.report import build_report
from aiscale.rollout.report_output import render_table, write_report
from aiscale.rollout.report_stats import (
    ERROR_RATE_TEST,
    LATENCY_TEST,
    binomial_quantile,
    newcombe_interval,
    quantile_interval,
    wilson_interval,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def version_stats(
    num_requests: int,
    num_errors: int,
    latencies_s: Any,
    metrics: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One version's entry shaped like ``serving.admin.counts_json``."""
    hist = latency_histogram().with_samples(latencies_s)
    return {
        "num_requests": num_requests,
        "num_errors": num_errors,
        "latency_ms": {"p50": hist.quantile(0.5) * 1000.0, "p90": None, "p99": None},
        "latency_histogram": {
            "upper_bounds_s": list(hist.upper_bounds),
            "counts": list(hist.counts),
        },
        "metrics": metrics or {},
    }


def ab_stats(seed: int = 0) -> dict[str, Any]:
    """Baseline v1 (5000 requests, 1 % errors); canary v2 (4000, 5 %, 20 % slower)."""
    rng = np.random.default_rng(seed)
    return {
        "deployment": "demo",
        "versions": {
            "v1": version_stats(5000, 50, rng.lognormal(np.log(0.05), 0.5, 5000)),
            "v2": version_stats(4000, 200, rng.lognormal(np.log(0.06), 0.5, 4000)),
        },
    }


def test_clearly_worse_canary_is_significant() -> None:
    """5 % vs 1 % errors over thousands of requests: p < 0.001 and the difference interval
    excludes 0; a 20 % slower canary: Mann-Whitney p < 0.001 and P(slower) > 0.5."""
    report = build_report(ab_stats())
    assert report.baseline == "v1"  # the version with the most requests
    comparison = report.comparison("v2")
    assert comparison.is_comparable
    assert comparison.error_rate_difference == pytest.approx(0.04)
    interval = comparison.error_rate_difference_interval
    assert interval is not None and 0.0 < interval.low < 0.04 < interval.high
    assert comparison.error_rate_test is not None
    assert comparison.error_rate_test.name == ERROR_RATE_TEST
    assert comparison.error_rate_test.p_value < 0.001
    assert comparison.latency_test is not None
    assert comparison.latency_test.name == LATENCY_TEST
    assert comparison.latency_test.p_value < 0.001
    assert comparison.probability_slower is not None and comparison.probability_slower > 0.55
    v1, v2 = report.version("v1"), report.version("v2")
    assert v1.traffic_share + v2.traffic_share == pytest.approx(1.0)
    assert v2.traffic_share == pytest.approx(4000 / 9000)
    p99_v1 = v1.latency[2]
    p99_v2 = v2.latency[2]
    assert p99_v1.name == "p99" and p99_v2.interval_ms.low > p99_v1.interval_ms.high


def test_identical_versions_show_no_difference() -> None:
    """Same counts and latencies: p = 1, the interval covers 0, P(slower) = 1/2."""
    rng = np.random.default_rng(1)
    same = version_stats(3000, 60, rng.lognormal(np.log(0.05), 0.5, 3000))
    report = build_report({"deployment": "d", "versions": {"a": same, "b": same}}, baseline="a")
    comparison = report.comparison("b")
    interval = comparison.error_rate_difference_interval
    assert interval is not None and interval.contains(0.0)
    assert comparison.error_rate_test is not None and comparison.error_rate_test.p_value > 0.99
    assert comparison.latency_test is not None and comparison.latency_test.p_value > 0.99
    assert comparison.probability_slower == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("hits", "trials", "low", "high"),
    [
        (10, 100, 0.0552291, 0.1743657),  # R: prop.test(10, 100, correct = FALSE)
        (81, 263, 0.2553, 0.3662),  # Newcombe (1998) Table I
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_published_values(
    hits: int, trials: int, low: float, high: float
) -> None:
    """The Wilson score interval reproduces published 95 % intervals."""
    interval = wilson_interval(hits, trials, 0.95)
    assert interval.low == pytest.approx(low, abs=5e-5)
    assert interval.high == pytest.approx(high, abs=5e-5)


def test_wilson_interval_contains_the_estimate_at_the_edges() -> None:
    """With no hits or all hits the interval still contains the observed rate (0 or 1)."""
    for trials in range(1, 300):
        assert wilson_interval(0, trials, 0.95).contains(0.0)
        assert wilson_interval(trials, trials, 0.95).contains(1.0)


@pytest.mark.parametrize(
    ("baseline", "other", "low", "high"),
    [((48, 80), (56, 70), 0.0524, 0.3339), ((3, 10), (9, 10), 0.1705, 0.8090)],
)
def test_newcombe_interval_matches_published_values(
    baseline: tuple[int, int], other: tuple[int, int], low: float, high: float
) -> None:
    """The difference interval is Newcombe's method 10 (his 1998 paper, examples a and c)."""
    interval = newcombe_interval(*baseline, *other, 0.95)
    assert interval.low == pytest.approx(low, abs=5e-5)
    assert interval.high == pytest.approx(high, abs=5e-5)


def test_latency_quantile_interval_covers_the_true_quantile() -> None:
    """Over seeded trials of 500 log-normal latencies, each 95 % interval for p50, p90 and p99
    contains the true quantile in at least 90 % of trials and contains the point estimate."""
    rng = np.random.default_rng(7)
    median_s, sigma, num_trials = 0.05, 0.6, 200
    for q in (0.5, 0.9, 0.99):
        truth = median_s * math.exp(sigma * NormalDist().inv_cdf(q))
        covered = 0
        for _ in range(num_trials):
            hist = latency_histogram().with_samples(rng.lognormal(math.log(median_s), sigma, 500))
            interval = quantile_interval(hist, q, 0.95)
            assert interval.contains(hist.quantile(q))
            assert math.isfinite(interval.high)
            covered += interval.contains(truth)
        assert covered / num_trials >= 0.90, (q, covered)


def test_binomial_quantile_agrees_with_scipy() -> None:
    """The ranks of the order-statistic interval equal scipy.stats.binom.ppf."""
    from scipy.stats import binom

    for num_trials in (1, 2, 30, 31, 100, 999, 10_000, 1_000_000):
        for q in (0.5, 0.9, 0.99):
            for probability in (0.005, 0.025, 0.05, 0.5, 0.95, 0.975, 0.995):
                expected = int(binom.ppf(probability, num_trials, q))
                assert binomial_quantile(probability, num_trials, q) == expected


def test_quantile_interval_is_open_when_the_data_cannot_bound_it() -> None:
    """With 30 samples no 95 % upper bound for p99 exists (0.99**30 > 2.5 %): the end is inf."""
    hist = latency_histogram().with_samples(np.linspace(0.01, 0.1, 30))
    assert quantile_interval(hist, 0.99, 0.95).high == math.inf
    assert math.isfinite(quantile_interval(hist, 0.5, 0.95).high)


def test_write_report_writes_valid_files(tmp_path: Path) -> None:
    """JSON, Markdown, self-contained HTML and two valid PNGs are written and name the tests."""
    report = build_report(ab_stats())
    paths = write_report(report, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["errors.png", "latency.png", "report.html", "report.json", "report.md"]
    assert all(p.is_file() and p.parent == tmp_path / "out" for p in paths)
    for name in ("errors.png", "latency.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["baseline"] == "v1"
    v2 = data["comparisons"][0]
    assert v2["error_rate_test"]["name"] == ERROR_RATE_TEST
    assert v2["error_rate_test"]["p_value"] < 0.001
    assert v2["latency_test"]["name"] == LATENCY_TEST
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert ERROR_RATE_TEST in markdown and "Wilson" in markdown and "Newcombe" in markdown


def test_single_version_deployment_reports_without_comparisons(tmp_path: Path) -> None:
    """A deployment with one version gets its numbers, no comparison, and a note saying why."""
    rng = np.random.default_rng(2)
    stats = {
        "deployment": "solo",
        "versions": {"v1": version_stats(800, 4, rng.exponential(0.02, 800))},
    }
    report = build_report(stats)
    assert report.baseline == "v1" and report.comparisons == ()
    assert report.version("v1").traffic_share == 1.0
    assert any("Only one version" in note for note in report.notes)
    assert len(write_report(report, tmp_path)) == 5


def test_low_traffic_version_is_not_given_intervals() -> None:
    """A version with fewer than min_requests requests is "not enough traffic": counts and
    share only, no error rate, quantiles, tests or metric intervals."""
    rng = np.random.default_rng(3)
    stats = ab_stats()
    stats["versions"]["v3"] = version_stats(
        12,
        1,
        rng.lognormal(np.log(0.05), 0.5, 12),
        {"score": {"mean": 4.0, "num_samples": 12, "std": 1.0}},
    )
    report = build_report(stats)
    v3 = report.version("v3")
    assert not v3.has_enough_traffic and v3.note == "not enough traffic"
    assert v3.num_requests == 12 and v3.error_rate is None and v3.error_rate_interval is None
    assert v3.latency == () and v3.metrics[0].interval is None
    comparison = report.comparison("v3")
    assert not comparison.is_comparable and "not enough traffic" in comparison.note
    assert comparison.error_rate_test is None and comparison.latency_test is None
    console = Console(record=True, width=240)
    console.print(render_table(report))
    assert "not enough traffic" in console.export_text()


def test_custom_metrics_need_a_std_for_an_interval() -> None:
    """With only mean and count the report gives both and says the interval needs samples;
    with a std it gives mean +- z std / sqrt(n) and a Welch z-test of the difference."""
    rng = np.random.default_rng(4)
    latencies = rng.lognormal(np.log(0.05), 0.5, 1000)
    stats = {
        "deployment": "d",
        "versions": {
            "v1": version_stats(
                1000,
                10,
                latencies,
                {
                    "score": {"mean": 4.0, "num_samples": 900},
                    "ctr": {"mean": 0.20, "num_samples": 1000, "std": 0.4},
                },
            ),
            "v2": version_stats(
                900,
                9,
                latencies,
                {
                    "score": {"mean": 3.5, "num_samples": 800},
                    "ctr": {"mean": 0.30, "num_samples": 900, "std": 0.46},
                    "empty": {"mean": None, "num_samples": 0},
                },
            ),
        },
    }
    report = build_report(stats)
    score = next(m for m in report.version("v2").metrics if m.name == "score")
    assert (score.mean, score.num_samples, score.std, score.interval) == (3.5, 800, None, None)
    assert "interval: needs samples" in score.note
    ctr = next(m for m in report.version("v1").metrics if m.name == "ctr")
    assert ctr.interval is not None
    assert ctr.interval.low == pytest.approx(0.20 - 1.959964 * 0.4 / math.sqrt(1000), abs=1e-6)
    by_name = {m.name: m for m in report.comparison("v2").metrics}
    assert by_name["score"].difference == pytest.approx(-0.5)
    assert by_name["score"].interval is None and by_name["score"].test is None
    assert by_name["ctr"].test is not None and by_name["ctr"].test.p_value < 0.001
    assert by_name["ctr"].interval is not None and by_name["ctr"].interval.low > 0.0
    assert by_name["empty"].difference is None


def test_baseline_can_be_chosen() -> None:
    """An explicit baseline is used even when it has fewer requests; differences flip sign."""
    report = build_report(ab_stats(), baseline="v2")
    assert report.baseline == "v2"
    comparison = report.comparison("v1")
    assert comparison.error_rate_difference == pytest.approx(-0.04)
    assert comparison.probability_slower is not None and comparison.probability_slower < 0.45


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    stats = ab_stats()
    node: Any = stats
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return stats


@pytest.mark.parametrize(
    ("stats", "kwargs", "field"),
    [
        ({"deployment": "d"}, {}, "versions"),
        ({"deployment": "d", "versions": {}}, {}, "versions"),
        (_with(("versions", "v2", "num_requests"), -5), {}, "versions.v2.num_requests"),
        (_with(("versions", "v1", "num_errors"), -1), {}, "versions.v1.num_errors"),
        (_with(("versions", "v1", "num_errors"), 6000), {}, "versions.v1.num_errors"),
        (_with(("versions", "v1", "num_requests"), 1.5), {}, "versions.v1.num_requests"),
        (
            _with(("versions", "v2", "latency_histogram", "counts"), [-1] * 257),
            {},
            "versions.v2.latency_histogram.counts",
        ),
        (
            _with(("versions", "v2", "latency_histogram", "counts"), [1, 2]),
            {},
            "versions.v2.latency_histogram.counts",
        ),
        (
            _with(("versions", "v2", "latency_histogram", "upper_bounds_s"), [2.0, 1.0]),
            {},
            "versions.v2.latency_histogram.upper_bounds_s",
        ),
        (
            _with(("versions", "v2", "metrics"), {"s": {"mean": 1.0}}),
            {},
            "versions.v2.metrics.s.num_samples",
        ),
        (ab_stats(), {"baseline": "v9"}, "baseline"),
        (ab_stats(), {"confidence": 1.5}, "confidence"),
    ],
)
def test_bad_input_names_the_field(
    stats: dict[str, Any], kwargs: dict[str, Any], field: str
) -> None:
    """No versions, negative or impossible counts, malformed histograms, an unknown baseline
    or confidence outside (0, 1): InvalidInput naming the field."""
    with pytest.raises(InvalidInput) as caught:
        build_report(stats, **kwargs)
    assert caught.value.field == field


def test_importing_the_report_loads_no_plotting_or_io_library(tmp_path: Path) -> None:
    """In a fresh interpreter, importing the report and building one (to JSON) loads neither
    matplotlib, rich nor a web/database library; writing it then loads matplotlib."""
    code = (
        "import sys, pathlib\n"
        "from aiscale.rollout.report import build_report\n"
        "from aiscale.rollout.report_output import report_json, write_report\n"
        "stats = {'versions': {'v1': {'num_requests': 40, 'num_errors': 0,\n"
        "  'latency_histogram': {'upper_bounds_s': [0.1, 0.2], 'counts': [20, 20, 0]}}}}\n"
        "report = build_report(stats)\n"
        "report_json(report)\n"
        "bad = ('matplotlib', 'rich', 'starlette', 'sqlalchemy', 'redis', 'ray', 'uvicorn')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in bad)))\n"
        "write_report(report, pathlib.Path(sys.argv[1]))\n"
        "print('matplotlib' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.splitlines() == ["", "True"]
