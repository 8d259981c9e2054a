"""Report files of ``aiscale data check`` and ``aiscale data drift``: JSON, HTML and plots.

The quality report is ``report.json`` and ``report.html``; the drift report adds one PNG per
feature (``plots/<feature>.png``: reference against current, overlaid histograms for numbers,
side-by-side shares for categories, text lengths for text, and the projection on the line
between the two centroids for embeddings). Plots are drawn on a bare matplotlib ``Figure``
with the Agg canvas (no pyplot state, no display); matplotlib loads only when a drift report
is written.

This module computes no statistics of its own beyond what a plot shows; it writes files.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from aiscale.data.drift import DriftReport, FeatureDrift
from aiscale.data.quality import QualityReport

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    ".bad{color:#b00020;font-weight:bold}.ok{color:#0a7d27}img{max-width:34em;margin:4px}"
)


def write_quality_report(
    report: QualityReport, out_dir: Path, meta: Mapping[str, Any]
) -> dict[str, Path]:
    """Write ``report.json`` and ``report.html``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**meta, **report.to_dict()}
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    verdict = (
        '<p class="ok">All checks passed.</p>'
        if report.is_passed
        else f'<p class="bad">{len(report.failed)} of {len(report.checks)} checks failed.</p>'
    )
    rows = []
    for check in report.checks:
        examples = "; ".join(f"row {e.row}: {e.value}" for e in check.examples)
        rows.append(
            _row(
                check.name,
                check.expectation,
                _passed(check.is_passed),
                f"{check.observed:.4g}",
                f"{check.num_failing} / {check.num_checked}",
                check.detail,
                examples,
                raw=(2,),
            )
        )
    body = (
        f"<h1>Data quality: {_e(str(meta.get('deployment', '')))}</h1>{_meta_list(meta)}"
        f"<p>{report.num_rows} rows checked.</p>{verdict}"
        "<table><tr><th>check</th><th>expectation</th><th>passed</th><th>observed</th>"
        "<th>failing</th><th>detail</th><th>examples</th></tr>" + "".join(rows) + "</table>"
    )
    html_path = out_dir / "report.html"
    html_path.write_text(_page("Data quality", body), encoding="utf-8")
    return {"json": json_path, "html": html_path}


def write_drift_report(
    report: DriftReport,
    reference: Mapping[str, Sequence[Any]],
    current: Mapping[str, Sequence[Any]],
    out_dir: Path,
    meta: Mapping[str, Any],
) -> dict[str, Path]:
    """Write ``report.json``, ``report.html`` and ``plots/<feature>.png``; returns the paths
    (plots under ``plot:<feature>``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    paths: dict[str, Path] = {}
    plot_names: dict[str, str] = {}
    for feature in report.features:
        name = f"{_file_name(feature.name)}.png"
        (plots_dir / name).write_bytes(
            feature_png(feature, reference[feature.name], current[feature.name])
        )
        paths[f"plot:{feature.name}"] = plots_dir / name
        plot_names[feature.name] = name
    data = {**meta, **report.to_dict(), "plots": {k: f"plots/{v}" for k, v in plot_names.items()}}
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    verdict = (
        f'<p class="bad">Drift in {len(report.drifted)} of {len(report.features)} features: '
        f"{_e(', '.join(report.drifted))}.</p>"
        if report.is_drift
        else f'<p class="ok">No drift in {len(report.features)} features.</p>'
    )
    rows = [
        _row(
            f.name, f.role, f.kind, f.test, f"{f.statistic:.4g}", f"{f.p_value:.3g}",
            f"{f.adjusted_p_value:.3g}", _passed(not f.is_drift, ok="no", bad="DRIFT"),
            ", ".join(f"{k} {v:.3g}" for k, v in f.effect_sizes.items()),
            f"{f.n_ref} / {f.n_cur}", "; ".join((*_new(f), *f.notes)), raw=(7,),
        )
        for f in report.features
    ]  # fmt: skip
    images = "".join(
        f'<figure><img src="plots/{_e(plot_names[f.name])}" alt="{_e(f.name)}">'
        f"<figcaption>{_e(f.name)}</figcaption></figure>"
        for f in report.features
    )
    body = (
        f"<h1>Drift: {_e(str(meta.get('deployment', '')))}</h1>{_meta_list(meta)}"
        f"<p>alpha {report.alpha:g}, correction for {len(report.features)} tests: "
        f"{_e(report.correction)}.</p>{verdict}"
        "<table><tr><th>feature</th><th>role</th><th>kind</th><th>test</th><th>statistic</th>"
        "<th>p</th><th>adjusted p</th><th>drift</th><th>effect sizes</th><th>n ref / cur</th>"
        "<th>notes</th></tr>" + "".join(rows) + f"</table><h2>Plots</h2>{images}"
    )
    html_path = out_dir / "report.html"
    html_path.write_text(_page("Drift", body), encoding="utf-8")
    paths["json"] = json_path
    paths["html"] = html_path
    return paths


def feature_png(
    feature: FeatureDrift, reference: Sequence[Any], current: Sequence[Any]
) -> bytes:
    """One feature's reference-versus-current picture as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.2), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    ref = [v for v in reference if not _is_null(v)]
    cur = [v for v in current if not _is_null(v)]
    if feature.kind in ("categorical", "boolean"):
        _bars(axes, ref, cur)
    else:
        ref_x, cur_x, xlabel = _numbers(feature.kind, ref, cur)
        edges = [float(e) for e in np.histogram_bin_edges(np.concatenate([ref_x, cur_x]), 30)]
        axes.hist(ref_x, bins=edges, density=True, alpha=0.5, label=f"reference ({len(ref_x)})")
        axes.hist(cur_x, bins=edges, density=True, alpha=0.5, label=f"current ({len(cur_x)})")
        axes.set_xlabel(xlabel)
        axes.set_ylabel("density")
        axes.legend()
    verdict = "DRIFT" if feature.is_drift else "no drift"
    axes.set_title(f"{feature.name}: {verdict} (adjusted p {feature.adjusted_p_value:.3g})")
    figure.tight_layout()
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _numbers(
    kind: str, ref: list[Any], cur: list[Any]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], str]:
    if kind == "numeric":
        return np.asarray(ref, float), np.asarray(cur, float), "value"
    if kind == "text":
        ref_len = np.asarray([len(str(v)) for v in ref], float)
        cur_len = np.asarray([len(str(v)) for v in cur], float)
        return ref_len, cur_len, "text length (characters)"
    ref_m, cur_m = np.asarray(ref, float), np.asarray(cur, float)
    direction = cur_m.mean(axis=0) - ref_m.mean(axis=0)
    norm = float(np.linalg.norm(direction))
    if norm == 0.0:
        direction = np.zeros(ref_m.shape[1])
        direction[0] = 1.0
    else:
        direction /= norm
    return ref_m @ direction, cur_m @ direction, "projection on the centroid shift"


def _bars(axes: Any, ref: list[Any], cur: list[Any]) -> None:
    ref_counts, cur_counts = Counter(map(str, ref)), Counter(map(str, cur))
    labels = [c for c, _ in (ref_counts + cur_counts).most_common(20)]
    x = np.arange(len(labels))
    for offset, counts, total, name in (
        (-0.2, ref_counts, len(ref), "reference"),
        (0.2, cur_counts, len(cur), "current"),
    ):
        shares = [counts[c] / max(1, total) for c in labels]
        axes.bar(x + offset, shares, width=0.4, label=f"{name} ({total})")
    axes.set_xticks(x, labels, rotation=45, ha="right")
    axes.set_ylabel("share")
    axes.legend()


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _new(feature: FeatureDrift) -> tuple[str, ...]:
    if not feature.new_categories:
        return ()
    return (f"new categories: {', '.join(feature.new_categories[:10])}",)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100] or "feature"


def _passed(is_ok: bool, *, ok: str = "yes", bad: str = "NO") -> str:
    return f'<span class="ok">{ok}</span>' if is_ok else f'<span class="bad">{bad}</span>'


def _row(*cells: str, raw: tuple[int, ...] = ()) -> str:
    shown = (c if i in raw else _e(c) for i, c in enumerate(cells))
    return "<tr>" + "".join(f"<td>{c}</td>" for c in shown) + "</tr>"


def _meta_list(meta: Mapping[str, Any]) -> str:
    items = "".join(
        f"<li>{_e(str(k))}: {_e(str(v))}</li>" for k, v in meta.items() if k != "deployment"
    )
    return f"<ul>{items}</ul>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )
