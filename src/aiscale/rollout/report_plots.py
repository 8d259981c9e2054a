"""The A/B report's plots: latency distributions and quantiles, and error rates, as PNG bytes.

Drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, no global figure
state, no display, no backend switch. Imported only by ``report_output.write_report``, so
matplotlib loads only when a report is written. This module computes no statistics and writes
no files; it returns the PNG bytes.
"""

from __future__ import annotations

import math
from io import BytesIO
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aiscale.rollout.report import NOT_ENOUGH_TRAFFIC, QUANTILES, ExperimentReport

__all__ = ["errors_png", "latency_png"]

_QUANTILE_NAMES = tuple(name for name, _ in QUANTILES)


def latency_png(report: ExperimentReport) -> bytes:
    """Left: each version's latency CDF from its histogram; right: quantiles with intervals."""
    figure, (cdf_axes, quantile_axes) = _figure(2)
    positions = np.arange(len(_QUANTILE_NAMES))
    width = 0.8 / max(1, len(report.versions))
    populated: list[float] = []
    for index, version in enumerate(report.versions):
        hist = version.latency_histogram
        if version.latency:  # versions without enough traffic are left out, as in the table
            bounds_ms = np.asarray(hist.upper_bounds) * 1000.0
            counts = np.asarray(hist.counts[:-1])
            cumulative = np.cumsum(counts) / hist.num_samples
            cdf_axes.step(bounds_ms, cumulative, where="post", label=version.version)
            used = np.flatnonzero(counts)
            if used.size:
                first = max(0, int(used[0]) - 1)
                populated += [float(bounds_ms[first]), float(bounds_ms[int(used[-1])])]
        if version.latency:
            values = np.array([q.value_ms for q in version.latency])
            low = np.array([q.interval_ms.low for q in version.latency])
            # An open upper end is drawn up to the estimate only; the table says "inf".
            high = np.array(
                [
                    q.interval_ms.high if math.isfinite(q.interval_ms.high) else q.value_ms
                    for q in version.latency
                ]
            )
            quantile_axes.errorbar(
                positions + (index - (len(report.versions) - 1) / 2) * width,
                values,
                yerr=[np.maximum(values - low, 0.0), np.maximum(high - values, 0.0)],
                fmt="o",
                capsize=4,
                label=version.version,
            )
    cdf_axes.set_xscale("log")
    if populated:
        cdf_axes.set_xlim(min(populated), max(populated))
    cdf_axes.set_xlabel("latency (ms)")
    cdf_axes.set_ylabel("fraction of requests")
    cdf_axes.set_title("latency distribution")
    quantile_axes.set_xticks(positions, _QUANTILE_NAMES)
    quantile_axes.set_yscale("log")
    quantile_axes.set_ylabel("latency (ms)")
    quantile_axes.set_title(f"quantiles with {report.confidence:.0%} intervals")
    for axes in (cdf_axes, quantile_axes):
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    return _png(figure)


def errors_png(report: ExperimentReport) -> bytes:
    """Error rate per version with its Wilson interval; versions without traffic left empty."""
    figure, (axes,) = _figure(1)
    names = [v.version for v in report.versions]
    for index, version in enumerate(report.versions):
        if version.error_rate is None or version.error_rate_interval is None:
            axes.annotate(NOT_ENOUGH_TRAFFIC, (index, 0.0), ha="center", va="bottom", fontsize=8)
            continue
        rate = version.error_rate * 100.0
        interval = version.error_rate_interval
        axes.bar(
            index,
            rate,
            color="tab:blue" if version.version == report.baseline else "tab:orange",
            alpha=0.6,
        )
        axes.errorbar(
            index,
            rate,
            yerr=[
                [max(0.0, rate - interval.low * 100.0)],
                [max(0.0, interval.high * 100.0 - rate)],
            ],
            fmt="none",
            ecolor="black",
            capsize=6,
        )
    axes.set_xticks(np.arange(len(names)), names)
    axes.set_ylabel("error rate (%)")
    axes.set_title(f"error rate with {report.confidence:.0%} Wilson intervals")
    return _png(figure)


def _figure(num_axes: int) -> tuple[Any, tuple[Any, ...]]:
    figure = Figure(figsize=(6.0 * num_axes, 4.0), dpi=100, layout="constrained")
    axes = figure.subplots(1, num_axes, squeeze=False)[0]
    return figure, tuple(axes)


def _png(figure: Any) -> bytes:
    FigureCanvasAgg(figure)
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
