"""Renderings of an ``ExperimentReport``: JSON, Markdown, self-contained HTML, PNG plots, a table.

Called by the CLI (``aiscale experiment report``) after ``report.build_report``; rich loads
only in ``render_table`` and matplotlib (``report_plots``) only in ``write_report``. This
module computes no statistics (``report`` and ``report_stats`` do); it only formats them,
and only ``write_report`` touches the file system.
The HTML page is self-contained: styles inline, plots embedded as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiscale.rollout.report import (
    QUANTILES,
    Comparison,
    ExperimentReport,
    MetricComparison,
    MetricEstimate,
    VersionReport,
)
from aiscale.rollout.report_stats import Interval, SignificanceTest

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["render_table", "report_json", "report_markdown", "write_report"]

_QUANTILE_NAMES = tuple(name for name, _ in QUANTILES)
_FILES = ("report.json", "report.md", "report.html", "latency.png", "errors.png")


def write_report(report: ExperimentReport, out_dir: Path) -> list[Path]:
    """Write ``report.json``, ``report.md``, ``report.html``, ``latency.png`` and
    ``errors.png`` into ``out_dir`` (created if missing); return their paths in that order.

    Loads matplotlib (Agg, no display) on first call.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in _FILES]
    json_path, md_path, html_path, latency_path, errors_path = paths
    json_path.write_text(json.dumps(report_json(report), indent=2, allow_nan=False) + "\n")
    md_path.write_text(report_markdown(report))
    # Imported here so that JSON, Markdown and the table never load matplotlib.
    from aiscale.rollout.report_plots import errors_png, latency_png

    pngs = {"latency": latency_png(report), "errors": errors_png(report)}
    latency_path.write_bytes(pngs["latency"])
    errors_path.write_bytes(pngs["errors"])
    html_path.write_text(_report_html(report, pngs))
    return paths


def report_json(report: ExperimentReport) -> dict[str, Any]:
    """The report as JSON-ready data; open interval ends and other non-finite numbers are None."""
    return {
        "deployment": report.deployment,
        "baseline": report.baseline,
        "confidence": report.confidence,
        "min_requests": report.min_requests,
        "total_requests": report.total_requests,
        "versions": [_version_json(v) for v in report.versions],
        "comparisons": [_comparison_json(c) for c in report.comparisons],
        "notes": list(report.notes),
    }


def report_markdown(report: ExperimentReport) -> str:
    """The report as Markdown: a version table, a comparison table, metrics and notes."""
    lines = [f"# A/B report: {report.deployment or '(unnamed)'}", ""]
    lines += [f"Baseline: **{report.baseline}**; {report.total_requests} requests in all.", ""]
    lines += _md_table(_VERSION_HEADERS, [_version_row(report, v) for v in report.versions])
    if report.comparisons:
        lines += ["", f"## Against the baseline ({report.baseline})", ""]
        lines += _md_table(_COMPARISON_HEADERS, [_comparison_row(c) for c in report.comparisons])
    metric_rows = _metric_rows(report)
    if metric_rows:
        lines += ["", "## Custom metrics", ""]
        lines += _md_table(_METRIC_HEADERS, metric_rows)
    tests = _tests_used(report)
    if tests:
        lines += ["", "## Tests used", ""] + [f"- {name}" for name in tests]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    lines += ["", "![latency](latency.png)", "", "![errors](errors.png)", ""]
    return "\n".join(lines)


def render_table(report: ExperimentReport) -> Table:
    """One row per version: traffic, error rate, latency quantiles and the tests' p-values."""
    from rich.table import Table

    table = Table(title=f"A/B report: {report.deployment} (baseline {report.baseline})")
    for header in (*_VERSION_HEADERS, "error p", "latency p", "P(slower)"):
        table.add_column(header, justify="left" if header == "version" else "right")
    comparisons = {c.version: c for c in report.comparisons}
    for version in report.versions:
        comparison = comparisons.get(version.version)
        extra = ["baseline", "", ""] if version.version == report.baseline else ["-", "-", "-"]
        if comparison is not None and comparison.is_comparable:
            extra = [
                _p(comparison.error_rate_test),
                _p(comparison.latency_test),
                _num(comparison.probability_slower, 3),
            ]
        table.add_row(*_version_row(report, version), *extra)
    return table


_VERSION_HEADERS = (
    "version",
    "requests",
    "share",
    "error rate [CI]",
    "p50 ms [CI]",
    "p90 ms [CI]",
    "p99 ms [CI]",
)
_COMPARISON_HEADERS = (
    "version",
    "error rate diff [CI]",
    "error test p",
    "P(slower)",
    "latency test p",
    "note",
)
_METRIC_HEADERS = (
    "version",
    "metric",
    "mean",
    "n",
    "interval",
    "diff vs baseline [CI]",
    "p",
    "note",
)


def _version_row(report: ExperimentReport, version: VersionReport) -> list[str]:
    name = version.version + (" (baseline)" if version.version == report.baseline else "")
    if not version.has_enough_traffic:
        return [
            name,
            str(version.num_requests),
            f"{version.traffic_share:.1%}",
            version.note,
            "",
            "",
            "",
        ]
    error = f"{_pct(version.error_rate)} {_pct_interval(version.error_rate_interval)}"
    latency = [f"{q.value_ms:.1f} {_interval(q.interval_ms, 1)}" for q in version.latency]
    latency += [version.note] * (3 - len(latency))
    return [name, str(version.num_requests), f"{version.traffic_share:.1%}", error, *latency]


def _comparison_row(comparison: Comparison) -> list[str]:
    if not comparison.is_comparable:
        return [comparison.version, "", "", "", "", comparison.note]
    diff = comparison.error_rate_difference
    return [
        comparison.version,
        f"{_pct(diff)} {_pct_interval(comparison.error_rate_difference_interval)}",
        _p(comparison.error_rate_test),
        _num(comparison.probability_slower, 3),
        _p(comparison.latency_test),
        comparison.note,
    ]


def _metric_rows(report: ExperimentReport) -> list[list[str]]:
    comparisons = {c.version: {m.name: m for m in c.metrics} for c in report.comparisons}
    rows: list[list[str]] = []
    for version in report.versions:
        for metric in version.metrics:
            versus = comparisons.get(version.version, {}).get(metric.name)
            rows.append(_metric_row(version.version, metric, versus))
    return rows


def _metric_row(version: str, metric: MetricEstimate, versus: MetricComparison | None) -> list[str]:
    diff = ""
    p = ""
    note = metric.note
    if versus is not None:
        diff = _num(versus.difference, 4)
        if versus.interval is not None:
            diff += f" {_interval(versus.interval, 4)}"
        p = _p(versus.test)
        if versus.note and versus.note != note:
            note = f"{note}; diff: {versus.note}" if note else versus.note
    interval = _interval(metric.interval, 4) if metric.interval is not None else ""
    return [
        version,
        metric.name,
        _num(metric.mean, 4),
        str(metric.num_samples),
        interval,
        diff,
        p,
        note,
    ]


def _tests_used(report: ExperimentReport) -> list[str]:
    names: list[str] = []
    for comparison in report.comparisons:
        tests = [comparison.error_rate_test, comparison.latency_test]
        tests += [m.test for m in comparison.metrics]
        for test in tests:
            if test is not None and test.name not in names:
                names.append(test.name)
    if any(c.is_comparable for c in report.comparisons):
        names.append(
            "error rate: Wilson score interval; difference: Newcombe hybrid score interval"
        )
    if any(v.latency for v in report.versions):
        names.append(
            "latency quantiles: order-statistic (binomial) interval on the "
            "histogram, interpolated within buckets"
        )
    return names


def _md_table(headers: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)]


def _report_html(report: ExperimentReport, pngs: dict[str, bytes]) -> str:
    def table(headers: tuple[str, ...], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    title = html.escape(f"A/B report: {report.deployment or '(unnamed)'}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>{title}</h1>",
        f"<p>Baseline: <b>{html.escape(report.baseline)}</b>; "
        f"{report.total_requests} requests in all.</p>",
        table(_VERSION_HEADERS, [_version_row(report, v) for v in report.versions]),
    ]
    if report.comparisons:
        parts.append(f"<h2>Against the baseline ({html.escape(report.baseline)})</h2>")
        parts.append(table(_COMPARISON_HEADERS, [_comparison_row(c) for c in report.comparisons]))
    metric_rows = _metric_rows(report)
    if metric_rows:
        parts += ["<h2>Custom metrics</h2>", table(_METRIC_HEADERS, metric_rows)]
    tests = _tests_used(report)
    if tests:
        parts.append(
            "<h2>Tests used</h2><ul>"
            + "".join(f"<li>{html.escape(t)}</li>" for t in tests)
            + "</ul>"
        )
    parts.append(
        "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>"
    )
    for name, png in pngs.items():
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<h2>{name.title()}</h2><img alt="{name}" src="data:image/png;base64,{encoded}">'
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _version_json(version: VersionReport) -> dict[str, Any]:
    return {
        "version": version.version,
        "num_requests": version.num_requests,
        "num_errors": version.num_errors,
        "traffic_share": version.traffic_share,
        "has_enough_traffic": version.has_enough_traffic,
        "error_rate": version.error_rate,
        "error_rate_interval": _interval_json(version.error_rate_interval),
        "error_rate_interval_method": "Wilson score" if version.error_rate_interval else None,
        "num_latency_samples": version.num_latency_samples,
        "latency_ms": {
            q.name: {
                "value": q.value_ms,
                "interval": _interval_json(q.interval_ms),
                "interval_method": "order statistic (binomial), histogram-interpolated",
            }
            for q in version.latency
        },
        "metrics": {
            m.name: {
                "mean": _finite(m.mean),
                "num_samples": m.num_samples,
                "std": _finite(m.std),
                "interval": _interval_json(m.interval),
                "note": m.note,
            }
            for m in version.metrics
        },
        "note": version.note,
    }


def _comparison_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "version": comparison.version,
        "baseline": comparison.baseline,
        "is_comparable": comparison.is_comparable,
        "note": comparison.note,
        "error_rate_difference": comparison.error_rate_difference,
        "error_rate_difference_interval": _interval_json(comparison.error_rate_difference_interval),
        "error_rate_difference_interval_method": "Newcombe hybrid score"
        if comparison.error_rate_difference_interval
        else None,
        "error_rate_test": _test_json(comparison.error_rate_test),
        "latency_test": _test_json(comparison.latency_test),
        "probability_slower": comparison.probability_slower,
        "metrics": {
            m.name: {
                "difference": _finite(m.difference),
                "interval": _interval_json(m.interval),
                "test": _test_json(m.test),
                "note": m.note,
            }
            for m in comparison.metrics
        },
    }


def _interval_json(interval: Interval | None) -> list[float | None] | None:
    if interval is None:
        return None
    return [_finite(interval.low), _finite(interval.high)]


def _test_json(test: SignificanceTest | None) -> dict[str, Any] | None:
    if test is None:
        return None
    return {"name": test.name, "statistic": _finite(test.statistic), "p_value": test.p_value}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _interval(interval: Interval | None, digits: int) -> str:
    if interval is None:
        return ""
    return f"[{_num(interval.low, digits)}, {_num(interval.high, digits)}]"


def _pct_interval(interval: Interval | None) -> str:
    if interval is None:
        return ""
    return f"[{_pct(interval.low)}, {_pct(interval.high)}]"


def _num(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100.0:.2f}%"


def _p(test: SignificanceTest | None) -> str:
    if test is None:
        return "-"
    return f"{test.p_value:.2g}" if test.p_value >= 1e-4 else "<1e-4"
