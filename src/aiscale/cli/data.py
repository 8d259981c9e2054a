"""``aiscale data ...``: the captured production data — query, compact, consume (NATS), check,
drift, export, retrain. Each command is a thin call into :mod:`aiscale.data`.

The data is read from ``<data-dir>/capture`` (the server's data dir). Exit status: 0 fine,
1 an error (one line on stderr), 2 a usage error, 3 the data failed a check (quality
violations, drift) so that scripts and CI can gate on it.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shlex
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from aiscale.cli._common import (
    DataDirOption,
    KeyOption,
    RegistryUrlOption,
    UrlOption,
    _stderr,
    _stdout,
    app,
    open_artifacts,
    open_registry,
    reported_errors,
    resolve_paths,
)
from aiscale.errors import ConfigError, InvalidInput

data_app = typer.Typer(
    help="Captured production data: query, compact, quality, drift, datasets, retraining.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

#: Exit status when the data failed a check (quality violations or drift).
EXIT_CHECK_FAILED = 3


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class DatasetFormat(StrEnum):
    parquet = "parquet"
    jsonl = "jsonl"
    #: An LLM deployment's answers as ``{"messages": [...]}`` lines, feedback joined.
    chat = "chat"


DeploymentOption = Annotated[str, typer.Option("--deployment", "-d", help="Deployment name.")]
ReportOption = Annotated[Path, typer.Option("--report", help="Folder for the report files.")]
SinceOption = Annotated[
    str, typer.Option(help="Start: ISO time (2024-05-01T12:00) or age (30m, 24h, 7d).")
]
UntilOption = Annotated[str | None, typer.Option(help="End (exclusive) [default: now].")]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _capture_root(data_dir: Path | None) -> Path:
    """The data dir, checked to hold captured data at all."""
    folder = resolve_paths(data_dir, None).data_dir
    if not (folder / "capture").is_dir():
        raise InvalidInput(
            f"no captured data under {folder} (is this the server's --data-dir, and has it "
            "served any request with capture on?)",
            field="data_dir",
        )
    return folder


def _period(since: str, until: str | None, now: dt.datetime) -> Any:
    from aiscale.data.periods import Period, parse_time

    start = parse_time(since, now, field="since")
    end = parse_time(until, now, field="until") if until else None
    if end is not None and start >= end:
        raise InvalidInput(f"--since {since} is not before --until {until}", field="since")
    return Period(start, end)


# --------------------------------------------------------------- query and compact


@data_app.command("query")
def data_query(
    sql: Annotated[str, typer.Argument(help="SQL over the views `requests` and `feedback`.")],
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="How to print the rows.")
    ] = OutputFormat.table,
    is_compact_first: Annotated[
        bool, typer.Option("--compact/--no-compact", help="Compact the log into Parquet first.")
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Run DuckDB SQL over the captured data (Parquet and the log not yet compacted)."""
    from aiscale.data.query import run_query

    with reported_errors():
        folder = _capture_root(data_dir)
        if is_compact_first:
            _compact(folder, is_quiet=True)
        table = run_query(folder, sql)
        rows = table.to_pylist()
        if output_format is OutputFormat.json:
            typer.echo(json.dumps(rows, default=str, indent=2))
        elif output_format is OutputFormat.csv:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=table.column_names, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            typer.echo(buffer.getvalue(), nl=False)
        else:
            shown = Table(*table.column_names)
            for row in rows:
                shown.add_row(*("" if v is None else str(v) for v in row.values()))
            _stdout().print(shown)
            _stdout().print(f"{len(rows)} rows", highlight=False)


@data_app.command("compact")
def data_compact(data_dir: DataDirOption = None) -> None:
    """Move sealed log segments into Parquet (deduplicated), with progress for long runs."""
    with reported_errors():
        _compact(_capture_root(data_dir), is_quiet=False)


def _compact(folder: Path, *, is_quiet: bool) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from aiscale.data.capture import CaptureLayout
    from aiscale.data.compaction import CompactionReport, compact

    layout = CaptureLayout.from_data_dir(folder)
    total = _sealed_bytes(layout.log_dir)
    outcome: list[CompactionReport | BaseException] = []

    def work() -> None:
        try:
            outcome.append(compact(layout.log_dir, layout.parquet_url))
        except BaseException as exc:  # handed to the main thread, which reports it
            outcome.append(exc)

    thread = threading.Thread(target=work, name="compaction")
    thread.start()
    if total and not is_quiet:
        # Compaction removes each chunk's segments once they are in Parquet: bytes gone from
        # the log are bytes done.
        columns = (BarColumn(), DownloadColumn(), TimeRemainingColumn())
        with Progress(*columns, console=_stderr(), transient=True) as progress:
            task = progress.add_task("compacting", total=total)
            while thread.is_alive():
                thread.join(0.2)
                done = max(0, total - _sealed_bytes(layout.log_dir))
                progress.update(task, completed=done)
    thread.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    if not is_quiet:
        _stdout().print(
            f"compacted {result.num_segments} segments: {result.num_records_written} records "
            f"written in {result.num_files_written} files, {result.num_duplicates} duplicates "
            f"dropped" + (f", {result.torn_bytes} torn bytes skipped" if result.torn_bytes else ""),
            highlight=False,
        )


def _sealed_bytes(log_dir: Path) -> int:
    from aiscale.data.capture_segment import list_segments

    total = 0
    for kind in ("requests", "feedback"):
        directory = log_dir / kind
        if directory.is_dir():
            for path in list_segments(directory, is_sealed_only=True):
                try:
                    total += path.stat().st_size
                except FileNotFoundError:  # removed by the compaction meanwhile
                    pass
    return total


@data_app.command("consume")
def data_consume(
    nats_url: Annotated[
        str, typer.Option(help="The NATS JetStream server the gateways publish to.")
    ] = "nats://127.0.0.1:4222",
    stream: Annotated[
        str, typer.Option(help="The capture stream (server.capture.nats_stream).")
    ] = "AISCALE_CAPTURE",
    idle_s: Annotated[
        float, typer.Option("--idle", help="Stop once no record came for this many seconds.")
    ] = 1.0,
    max_s: Annotated[
        float | None, typer.Option("--max", help="Stop after this many seconds at most.")
    ] = None,
    is_compact_after: Annotated[
        bool, typer.Option("--compact/--no-compact", help="Compact into Parquet afterwards.")
    ] = True,
    data_dir: DataDirOption = None,
) -> None:
    """Land the records that gateways published to NATS JetStream in this data dir's capture
    log (acknowledged only once durable), then compact them: one dataset for every gateway."""
    import asyncio

    from aiscale.data.capture import CaptureLayout
    from aiscale.data.capture_nats import NatsCaptureConsumer

    with reported_errors():
        if idle_s <= 0 or (max_s is not None and max_s <= 0):
            raise InvalidInput("--idle and --max must be positive", field="idle")
        folder = resolve_paths(data_dir, None).data_dir
        consumer = NatsCaptureConsumer(nats_url, stream, CaptureLayout.from_data_dir(folder))
        report = asyncio.run(consumer.run(idle_s=idle_s, max_s=max_s))
        _stdout().print(
            f"landed {report.requests} requests and {report.feedback} feedback records from "
            f"{stream} in {folder / 'capture'}",
            highlight=False,
            soft_wrap=True,
        )
        if is_compact_after:
            _compact(folder, is_quiet=False)


# --------------------------------------------------------------- quality and drift


@data_app.command("check")
def data_check(
    deployment: DeploymentOption,
    report: ReportOption,
    expectations: Annotated[
        Path | None,
        typer.Option(help="YAML/JSON expectations [default: <data-dir>/expectations/<D>.yaml]."),
    ] = None,
    since: SinceOption = "24h",
    until: UntilOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Check captured data against the deployment's quality expectations; exit 3 on violations."""
    from aiscale.data.checks import check_examples, load_expectations, summary
    from aiscale.data.data_reports import write_quality_report
    from aiscale.data.examples import load_examples

    with reported_errors():
        folder = _capture_root(data_dir)
        file = expectations or folder / "expectations" / f"{deployment}.yaml"
        if expectations is None and not file.is_file():
            raise ConfigError(
                f"no expectations for {deployment!r}: pass --expectations FILE or write {file}",
                field="expectations",
            )
        rules = load_expectations(file)
        period = _period(since, until, _now())
        examples = load_examples(folder, deployment, period)
        result = check_examples(examples, rules)
        paths = write_quality_report(
            result,
            report,
            {"deployment": deployment, "period": period.describe(), "expectations": str(file)},
        )
        table = Table("check", "passed", "observed", "failing", "detail")
        for check in result.checks:
            table.add_row(
                check.name,
                "yes" if check.is_passed else "NO",
                f"{check.observed:.4g}",
                f"{check.num_failing}/{check.num_checked}",
                check.detail,
            )
        console = _stdout()
        console.print(table)
        console.print(f"{summary(result)} on {result.num_rows} rows", highlight=False)
        console.print(f"report: {paths['html']}", highlight=False, soft_wrap=True)
    if not result.is_passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


@data_app.command("drift")
def data_drift(
    deployment: DeploymentOption,
    reference: Annotated[
        str, typer.Option(help="A file (Parquet/JSONL/CSV, e.g. training data) or a period.")
    ],
    report: ReportOption,
    current: Annotated[
        str, typer.Option(help="The period tested: START..END or an age (1h).")
    ] = "1h",
    alpha: Annotated[float, typer.Option(help="False alarm rate under no drift.")] = 0.05,
    correction: Annotated[
        str, typer.Option(help="Multiple-testing correction: bh, bonferroni or none.")
    ] = "bh",
    kind: Annotated[
        list[str] | None,
        typer.Option(help="FEATURE=KIND (numeric, categorical, boolean, text, embedding)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the permutation tests.")] = 0,
    data_dir: DataDirOption = None,
) -> None:
    """Test the current window against a reference per feature (and outputs); exit 3 on drift."""
    from aiscale.data.checks import compare, load_reference, summary
    from aiscale.data.data_reports import write_drift_report
    from aiscale.data.examples import load_examples
    from aiscale.data.periods import parse_period

    with reported_errors():
        folder = _capture_root(data_dir)
        kinds = _kinds(kind or [])
        now = _now()
        period = parse_period(current, now, field="current")
        current_examples = load_examples(folder, deployment, period)
        ref = load_reference(reference, folder, deployment, now)
        result, ref_columns, cur_columns = compare(
            ref, current_examples, alpha=alpha, correction=correction, kinds=kinds, seed=seed
        )
        paths = write_drift_report(
            result,
            ref_columns,
            cur_columns,
            report,
            {"deployment": deployment, "reference": ref.source, "current": period.describe()},
        )
        table = Table("feature", "role", "kind", "test", "adjusted p", "drift")
        for feature in result.features:
            table.add_row(
                feature.name,
                feature.role,
                feature.kind,
                feature.test,
                f"{feature.adjusted_p_value:.3g}",
                "DRIFT" if feature.is_drift else "no",
            )
        console = _stdout()
        console.print(table)
        console.print(summary(result), highlight=False)
        console.print(f"report: {paths['html']}", highlight=False, soft_wrap=True)
    if result.is_drift:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _kinds(pairs: list[str]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise InvalidInput(f"--kind takes FEATURE=KIND, got {pair!r}", field="kind")
        kinds[name] = value
    return kinds


# --------------------------------------------------------------- datasets and retraining


@data_app.command("export")
def data_export(
    deployment: DeploymentOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for the dataset.")],
    since: SinceOption = "7d",
    until: UntilOption = None,
    with_feedback: Annotated[
        bool, typer.Option("--with-feedback", help="Join each request's latest feedback.")
    ] = False,
    labeled_only: Annotated[
        bool, typer.Option("--labeled-only", help="Keep only examples with a label.")
    ] = False,
    output_format: Annotated[
        DatasetFormat, typer.Option("--format", help="File format.")
    ] = DatasetFormat.parquet,
    validation_fraction: Annotated[
        float, typer.Option(help="Share of examples in the validation split.")
    ] = 0.2,
    expectations: Annotated[
        Path | None, typer.Option(help="Quality expectations to check into the datasheet.")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Deduplicated train/validation splits of captured traffic, with a datasheet."""
    from aiscale.data.checks import load_expectations
    from aiscale.data.examples import load_examples
    from aiscale.data.export import ExportOptions, export_dataset

    with reported_errors():
        folder = _capture_root(data_dir)
        options = ExportOptions(
            format=output_format.value,
            with_feedback=with_feedback,
            is_labeled_only=labeled_only,
            validation_fraction=validation_fraction,
        )
        rules = load_expectations(expectations) if expectations is not None else None
        now = _now()
        examples = load_examples(folder, deployment, _period(since, until, now))
        result = export_dataset(examples, out, options, created_at=now, expectations=rules)
        counts = result.datasheet["counts"]
        _stdout().print(
            f"exported {counts['examples']} examples ({counts['train']} train, "
            f"{counts['validation']} validation) from {counts['requests']} requests; "
            f"{counts['duplicates_by_request_id'] + counts['duplicates_by_input']} duplicates "
            f"dropped\ndatasheet: {result.out_dir / 'datasheet.md'}",
            highlight=False,
            soft_wrap=True,
        )


@data_app.command("retrain")
def data_retrain(
    deployment: DeploymentOption,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="YAML retraining config (triggers, ...).")
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(help="Trainer command; {dataset} and {output} are replaced by paths."),
    ] = None,
    reference: Annotated[
        str | None, typer.Option(help="Drift trigger: reference file or period.")
    ] = None,
    current: Annotated[str | None, typer.Option(help="Drift trigger: current period.")] = None,
    expectations: Annotated[
        str | None, typer.Option(help="Quality trigger: expectations file.")
    ] = None,
    every_s: Annotated[
        float | None, typer.Option("--every", help="Schedule trigger: seconds between runs.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Dataset start (default 7d).")] = None,
    label_sources: Annotated[
        list[str] | None,
        typer.Option(
            "--label-source",
            help="Learn only labels given by this key id ('admin': any admin key); repeat "
            "the option [default: every label].",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if nothing fired.")] = False,
    wait_s: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the rollout's verdict.")
    ] = 0.0,
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """One check-and-retrain cycle: triggers → dataset → trainer → new version → canary."""
    from aiscale.data.retrain import RetrainConfig, run_cycle

    with reported_errors():
        data = _retrain_data(config_file)
        data["deployment"] = deployment
        if command is not None:
            data["command"] = shlex.split(command)
        triggers = data.setdefault("triggers", {})
        if reference is not None or current is not None:
            drift = triggers.setdefault("drift", {})
            drift.update({k: v for k, v in (("reference", reference), ("current", current)) if v})
        if expectations is not None:
            triggers.setdefault("quality", {})["expectations"] = expectations
        if every_s is not None:
            triggers["schedule"] = {"every_s": every_s}
        if since is not None:
            data.setdefault("dataset", {})["since"] = since
        if label_sources:
            data.setdefault("dataset", {})["label_sources"] = list(label_sources)
        config = RetrainConfig.from_dict(data)
        paths = resolve_paths(data_dir, registry_url)
        folder = _capture_root(data_dir)
        with open_registry(paths) as registry:
            result = run_cycle(
                config,
                data_dir=folder,
                url=url,
                registry=registry,
                artifacts=open_artifacts(paths),
                now=_now(),
                key=key,
                is_forced=force,
                wait_s=wait_s,
            )
        console = _stdout()
        for note in result.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
        if not result.is_triggered:
            console.print(f"{deployment}: no trigger fired; nothing to do", highlight=False)
            return
        console.print(
            f"{deployment}: retrained ({'; '.join(result.reasons)}) -> version "
            f"{result.version}, rollout {(result.rollout or {}).get('status')}",
            highlight=False,
            soft_wrap=True,
        )
        for name, path in result.reports.items():
            console.print(f"{name} report: {path}", highlight=False, soft_wrap=True)


def _retrain_data(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", field="config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", field="config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping", field="config")
    return data
