"""``aiscale data export|check|drift`` as a user runs them, on data written by a real capture
sink (log files with group commit, partly compacted to Parquet), through Typer's CliRunner."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner, Result

from aiscale.cli import app
from tests.data.captured_data import feedback, request, write_capture

#: Exit status of a failed check (quality violations, drift).
CHECK_FAILED = 3


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_clean_failure(result: Result, message: str, exit_code: int = 1) -> None:
    """The given non-zero exit, the message in the output, and no traceback anywhere."""
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert message in result.output, result.output


def tabular(data_dir: Path, *, shift: float = 0.0, start_s: float | None = None) -> list[str]:
    """200 requests of deployment ``m`` (two numeric features, a class label as output), the
    older half compacted to Parquet and the newer half still in the log; returns their ids."""
    rng = np.random.default_rng(1)
    now = time.time() if start_s is None else start_s
    records = []
    for i in range(200):
        x = [round(float(v), 6) for v in rng.normal(shift, 1.0, size=2)]
        records.append(request(f"r{i:03d}", now - 600 + i, x, "pos" if x[0] > 0 else "neg"))
    write_capture(data_dir, records[:100], is_compacted=True)
    write_capture(data_dir, records[100:])
    return [r.request_id for r in records]


# ------------------------------------------------------------------------------- export


def test_export_dedups_and_splits_with_a_datasheet(tmp_path: Path, env: None) -> None:
    """`--deployment D --since ... --with-feedback --out DIR`: each request once, each input
    once (the labelled copy wins), disjoint train/validation Parquet files whose rows add up,
    and a datasheet with counts, time span, label distribution and quality results."""
    now = time.time()
    records = [request(f"r{i:02d}", now - 300 + i, [float(i), 1.0], "pos") for i in range(40)]
    # A retried request (same id) and a user sending the same input again (new id).
    records.append(request("r05", now - 200, [5.0, 1.0], "pos"))
    records.append(request("again", now - 100, [7.0, 1.0], "pos"))
    # Another deployment's traffic never leaks in, nor does traffic older than --since.
    records.append(request("other", now - 50, [1.0, 2.0], "x", deployment="n"))
    records.append(request("old", now - 7200, [99.0, 1.0], "neg"))
    labels = {f"r{i:02d}": "good" if i % 4 else "bad" for i in range(0, 40, 2)}
    labels["again"] = "bad"
    write_capture(
        tmp_path,
        records[:20],
        [feedback(rid, now - 10, label) for rid, label in labels.items()],
        is_compacted=True,
    )
    write_capture(tmp_path, records[20:])
    expectations = tmp_path / "m.yaml"
    expectations.write_text(
        yaml.safe_dump(
            {"columns": {"input_0": {"type": "number", "min_value": 0, "max_value": 100}}}
        )
    )
    out = tmp_path / "dataset"

    result = run(
        "data", "export", "--deployment", "m", "--since", "1h", "--with-feedback",
        "--out", str(out), "--expectations", str(expectations), "--data-dir", str(tmp_path),
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "exported 40 examples" in result.output
    train = pq.read_table(out / "train.parquet").to_pylist()
    validation = pq.read_table(out / "validation.parquet").to_pylist()
    assert len(train) + len(validation) == 40 and train and validation
    ids = [r["request_id"] for r in train + validation]
    assert len(ids) == len(set(ids)) and "other" not in ids and "old" not in ids
    inputs = [tuple(r["input"]) for r in train + validation]
    assert len(inputs) == len(set(inputs))
    assert not {tuple(r["input"]) for r in train} & {tuple(r["input"]) for r in validation}
    # The input sent twice keeps the labelled copy; features are flattened into columns.
    seven = next(r for r in train + validation if r["input"] == [7.0, 1.0])
    assert (seven["request_id"], seven["label"]) == ("again", "bad")
    assert {"input_0", "input_1", "output", "label", "score", "num_feedback"} <= set(train[0])

    sheet = json.loads((out / "datasheet.json").read_text())
    counts = sheet["counts"]
    # r00..r39 and "again": the retry of r05 is the same request (the views keep one row per
    # request id, the compacted one), and "again" repeats r07's input.
    assert counts["requests"] == 41
    assert counts["duplicates_by_request_id"] == 0 and counts["duplicates_by_input"] == 1
    assert (counts["examples"], counts["train"], counts["validation"]) == (
        40, len(train), len(validation),
    )  # fmt: skip
    assert counts["labeled"] == 21
    span = sheet["time_span"]
    assert span["first"] < span["last"]
    assert span["first"].startswith(time.strftime("%Y-%m-%dT%H", time.gmtime(now - 300)))
    label_total: dict[str, int] = {}
    for split in ("train", "validation"):
        for label, n in sheet["labels"][split].items():
            label_total[label] = label_total.get(label, 0) + n
    assert label_total == {"good": 10, "bad": 11, "(none)": 19}
    assert sheet["quality"]["is_passed"] is True
    assert sheet["with_feedback"] is True and sheet["files"]["train"] == "train.parquet"
    markdown = (out / "datasheet.md").read_text()
    assert "## Labels" in markdown and "| good |" in markdown and "all checks passed" in markdown


def test_export_jsonl_without_feedback(tmp_path: Path, env: None) -> None:
    """JSONL splits carry one JSON object per example and no feedback columns."""
    tabular(tmp_path)
    out = tmp_path / "ds"
    result = run(
        "data", "export", "-d", "m", "--since", "2h", "--format", "jsonl",
        "--validation-fraction", "0.5", "--out", str(out), "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {
        split: [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        for split in ("train", "validation")
    }
    assert len(rows["train"]) + len(rows["validation"]) == 200
    assert 60 < len(rows["validation"]) < 140
    assert "label" not in rows["train"][0] and rows["train"][0]["output"] in ("pos", "neg")
    sheet = json.loads((out / "datasheet.json").read_text())
    assert sheet["format"] == "jsonl" and sheet["labels"]["train"] == {"(none)": len(rows["train"])}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-d", "nope"), "no captured requests for deployment 'nope'"),
        (("-d", "m", "--since", "yesterday"), "'yesterday' is not a time"),
        (("-d", "m", "--since", "1h", "--until", "2h"), "is not before --until"),
        (("-d", "m", "--since", "2020-01-01..2020-01-02"), "is not a time"),
        (("-d", "m", "--since", "3000-01-01"), "has no successful captured requests"),
        (("-d", "m", "--labeled-only"), "labeled-only needs with-feedback"),
        (("-d", "m", "--validation-fraction", "1.5"), "validation_fraction must be in [0, 1)"),
        (("-d", "m", "--expectations", "missing.yaml"), "does not exist"),
    ],
)
def test_export_bad_input_is_one_clear_line(
    tmp_path: Path, env: None, args: tuple[str, ...], message: str
) -> None:
    """Unknown deployment, bad times, bad options: exit 1 and a message, no traceback."""
    tabular(tmp_path)
    result = run("data", "export", *args, "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path))
    assert_clean_failure(result, message)
    assert not (tmp_path / "o" / "datasheet.json").exists()


@pytest.mark.parametrize("command", ["export", "check", "drift"])
def test_missing_data_dir_is_a_clear_error(tmp_path: Path, env: None, command: str) -> None:
    """A data dir without captured data (or none at all) names the folder it looked in."""
    extra = {
        "export": ("--out", str(tmp_path / "o")),
        "check": ("--report", str(tmp_path / "r"), "--expectations", str(tmp_path / "e.yaml")),
        "drift": ("--report", str(tmp_path / "r"), "--reference", "24h..1h"),
    }[command]
    missing = tmp_path / "nowhere"
    result = run("data", command, "-d", "m", *extra, "--data-dir", str(missing))
    assert_clean_failure(result, f"no captured data under {missing}")


# -------------------------------------------------------------------------------- check


def write_expectations(path: Path, max_value: float) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "columns": {
                    "input_0": {"type": "number", "max_null_rate": 0.0, "max_value": max_value},
                    "output": {"type": "string", "allowed_values": ["pos", "neg"]},
                },
                "max_duplicate_rate": 0.01,
            }
        )
    )
    return path


def test_check_passes_and_writes_html_and_json(tmp_path: Path, env: None) -> None:
    """Good data: exit 0, every check passed in the table and in report.json/report.html."""
    tabular(tmp_path)
    rules = write_expectations(tmp_path / "m.yaml", max_value=100.0)
    report = tmp_path / "report"
    result = run(
        "data", "check", "-d", "m", "--expectations", str(rules), "--since", "1h",
        "--report", str(report), "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "quality checks passed on 200 rows" in result.output
    data = json.loads((report / "report.json").read_text())
    assert data["is_passed"] is True and data["num_rows"] == 200
    assert "<html" in (report / "report.html").read_text().lower()


def test_check_violation_exits_3_naming_the_check(tmp_path: Path, env: None) -> None:
    """A value out of range fails exactly its check: exit 3, the check named, offending
    examples in the JSON report."""
    tabular(tmp_path)
    rules = write_expectations(tmp_path / "m.yaml", max_value=1.0)
    # The default expectations file under the data dir is used when none is given.
    (tmp_path / "expectations").mkdir()
    rules.rename(tmp_path / "expectations" / "m.yaml")
    report = tmp_path / "report"
    result = run("data", "check", "-d", "m", "--report", str(report), "--data-dir", str(tmp_path))
    assert result.exit_code == CHECK_FAILED, result.output
    assert "quality checks failed" in result.output
    data = json.loads((report / "report.json").read_text())
    failed = [c for c in data["checks"] if not c["is_passed"]]
    assert [c["name"] for c in failed] == ["input_0.range"], failed
    assert failed[0]["examples"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-d", "nope", "--expectations", "RULES"), "no captured requests for deployment 'nope'"),
        (("-d", "m"), "no expectations for 'm'"),
        (("-d", "m", "--expectations", "RULES", "--since", "soon"), "'soon' is not a time"),
        (("-d", "m", "--expectations", "BAD"), "columns.input_0.type"),
        (("-d", "m", "--expectations", "missing.yaml"), "does not exist"),
    ],
)
def test_check_bad_input_is_one_clear_line(
    tmp_path: Path, env: None, args: tuple[str, ...], message: str
) -> None:
    tabular(tmp_path)
    rules = write_expectations(tmp_path / "rules.yaml", max_value=100.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"columns": {"input_0": {"type": "float"}}}))
    args = tuple({"RULES": str(rules), "BAD": str(bad)}.get(a, a) for a in args)
    result = run(
        "data", "check", *args, "--report", str(tmp_path / "r"), "--data-dir", str(tmp_path)
    )
    assert_clean_failure(result, message)


# -------------------------------------------------------------------------------- drift


def reference_file(path: Path, shift: float = 0.0) -> Path:
    """Training data as Parquet: the same two features and labels, 300 rows."""
    import pyarrow as pa

    rng = np.random.default_rng(7)
    x = rng.normal(shift, 1.0, size=(300, 2))
    pq.write_table(
        pa.table(
            {
                "input_0": x[:, 0],
                "input_1": x[:, 1],
                "output": ["pos" if v > 0 else "neg" for v in x[:, 0]],
            }
        ),
        path,
    )
    return path


def test_drift_report_has_html_json_and_a_plot_per_feature(tmp_path: Path, env: None) -> None:
    """Traffic shifted by 1.5 standard deviations against the training data: exit 3, the
    shifted input drifts (and so does the output), one PNG per feature in the report."""
    tabular(tmp_path, shift=1.5)
    report = tmp_path / "drift"
    result = run(
        "data", "drift", "-d", "m", "--reference", str(reference_file(tmp_path / "train.parquet")),
        "--current", "2h", "--report", str(report), "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == CHECK_FAILED, result.output
    assert "drift in" in result.output and "input_0" in result.output
    data = json.loads((report / "report.json").read_text())
    by_name = {f["name"]: f for f in data["features"]}
    assert set(by_name) == {"input_0", "input_1", "output"}
    assert by_name["input_0"]["is_drift"] and by_name["input_1"]["is_drift"]
    assert by_name["output"]["role"] == "output" and by_name["output"]["is_drift"]
    plots = sorted(p.name for p in (report / "plots").iterdir())
    assert plots == ["input_0.png", "input_1.png", "output.png"]
    assert all((report / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)
    html = (report / "report.html").read_text()
    assert all(f"plots/{p}" in html for p in plots)


def test_no_drift_against_a_period_of_own_traffic_exits_0(tmp_path: Path, env: None) -> None:
    """A reference period of the same traffic (older half against newer half): no drift."""
    tabular(tmp_path)
    now = time.time()
    older = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 1000))
    middle = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 500))
    result = run(
        "data", "drift", "-d", "m", "--reference", f"{older}..{middle}",
        "--current", f"{middle}..", "--report", str(tmp_path / "r"),
        "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no drift in 3 features" in result.output
    assert len(list((tmp_path / "r" / "plots").iterdir())) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-d", "nope", "--reference", "REF"), "no captured requests for deployment 'nope'"),
        (("-d", "m", "--reference", "missing.parquet"), "reference file"),
        (("-d", "m", "--reference", "REF", "--current", "last week"), "is not a period"),
        (("-d", "m", "--reference", "REF", "--kind", "input_0"), "--kind takes FEATURE=KIND"),
        (("-d", "m", "--reference", "REF", "--correction", "holm"), "correction"),
        (("-d", "m", "--reference", "REF", "--alpha", "2"), "alpha"),
        (("-d", "m", "--reference", "UNRELATED"), "share no feature"),
    ],
)
def test_drift_bad_input_is_one_clear_line(
    tmp_path: Path, env: None, args: tuple[str, ...], message: str
) -> None:
    tabular(tmp_path)
    ref = reference_file(tmp_path / "train.parquet")
    unrelated = tmp_path / "other.jsonl"
    unrelated.write_text('{"age": 3}\n{"age": 4}\n')
    args = tuple({"REF": str(ref), "UNRELATED": str(unrelated)}.get(a, a) for a in args)
    result = run(
        "data", "drift", *args, "--report", str(tmp_path / "r"), "--data-dir", str(tmp_path)
    )
    assert_clean_failure(result, message)
    assert not (tmp_path / "r" / "report.json").exists()


# ------------------------------------------------------------------------------ consume

NATS_URL = "nats://127.0.0.1:4222"


def test_consume_lands_published_records_and_compacts_them(tmp_path: Path, env: None) -> None:
    """Records a gateway published to JetStream land in the data dir once each, compacted
    to Parquet and visible to `aiscale data query`; a second run finds nothing new."""
    import asyncio
    import uuid

    from prometheus_client import CollectorRegistry

    from aiscale.data.capture_nats import NatsCaptureSink
    from aiscale.data.capture_record import CaptureConfig

    stream = f"T{uuid.uuid4().hex[:12]}"

    async def publish() -> None:
        sink = NatsCaptureSink(NATS_URL, stream, CaptureConfig(), CollectorRegistry())
        await sink.start()
        try:
            now = time.time()
            for i in range(12):
                await sink.append(request(f"n{i}", now + i, [float(i)], "pos"))
            await sink.append_feedback(feedback("n0", now + 20, "good"))
        finally:
            await sink.stop()

    asyncio.run(publish())
    try:
        args = ("--nats-url", NATS_URL, "--stream", stream, "--idle", "0.5", "--max", "30")
        first = run("data", "consume", *args, "--data-dir", str(tmp_path))
        assert first.exit_code == 0, first.output
        assert "landed 12 requests and 1 feedback records" in first.output
        assert "compacted" in first.output
        assert list((tmp_path / "capture" / "parquet").rglob("*.parquet"))
        again = run("data", "consume", *args, "--data-dir", str(tmp_path))
        assert "landed 0 requests and 0 feedback records" in again.output
        sql = "SELECT count(*) AS n, count(DISTINCT request_id) AS ids FROM requests"
        counted = run("data", "query", sql, "--format", "json", "--data-dir", str(tmp_path))
        assert json.loads(counted.output) == [{"n": 12, "ids": 12}]
    finally:
        _delete_stream(stream)


def test_consume_from_unreachable_nats_is_a_clear_error(tmp_path: Path, env: None) -> None:
    result = run(
        "data", "consume", "--nats-url", "nats://127.0.0.1:1", "--idle", "0.2",
        "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert_clean_failure(result, "cannot connect to NATS at nats://127.0.0.1:1")


def _delete_stream(stream: str) -> None:
    import asyncio

    import nats

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(delete())
