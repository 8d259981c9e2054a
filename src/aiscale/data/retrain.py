"""The retraining loop: production data in, a new model version out, shipped as a canary.

One *cycle* (:func:`run_cycle`, ``aiscale data retrain``) does, for one deployment:

1. look at the triggers: drift of the current window against a reference, data-quality
   checks failing beyond a threshold, or a schedule (time since the last retraining);
2. if one fired, export the deployment's recent traffic (with feedback) as a dataset;
3. run the trainer on it: a command (``{dataset}`` and ``{output}`` in its arguments are
   replaced by the dataset folder and the path the model must be written to; the same paths
   are in ``AISCALE_DATASET_DIR`` and ``AISCALE_OUTPUT_PATH``), or a Python callable
   ``trainer(dataset_dir, output_path)``;
4. register the model it wrote as a new version of the deployment's model (same runtime and
   config as the serving version unless configured), with the reasons and the datasheet in
   its metadata;
5. start a canary rollout of that version through the gateway's admin API; the rollout
   controller promotes it or rolls it back, and the cycle can wait for that verdict.

Everything a cycle produced stays under ``<data_dir>/retrain/<deployment>/<run id>/``
(reports, dataset, model, trainer log), and ``state.json`` beside the runs remembers the last
one for the schedule. Blocking (subprocess, SQL, HTTP): run it from the CLI or a worker
thread, never on the gateway's event loop.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aiscale.data.checks import check_examples, compare, load_expectations, load_reference
from aiscale.data.data_reports import write_drift_report, write_quality_report
from aiscale.data.examples import load_examples
from aiscale.data.export import ExportOptions, export_dataset
from aiscale.data.periods import parse_period, parse_time
from aiscale.data.retrain_admin import AdminClient
from aiscale.errors import AiscaleError, ConfigError, InvalidInput
from aiscale.registry import ArtifactStore, SqlRegistry, register_with_artifact

logger = logging.getLogger(__name__)

#: ``trainer(dataset_dir, output_path)``: writes a model file (or folder) at ``output_path``.
Trainer = Callable[[Path, Path], None]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DriftTrigger(_Frozen):
    """Retrain when the current window drifted from the reference (a file or a period)."""

    reference: str
    current: str = "1h"
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    correction: Literal["bh", "bonferroni", "none"] = "bh"
    #: Only drift in these features counts; empty means any feature, outputs included.
    features: tuple[str, ...] = ()


class QualityTrigger(_Frozen):
    """Retrain when more than ``max_failed_checks`` expectations fail on the window."""

    expectations: str
    window: str = "1h"
    max_failed_checks: Annotated[int, Field(ge=0)] = 0


class ScheduleTrigger(_Frozen):
    """Retrain when the last retraining is at least ``every_s`` old (or there was none)."""

    every_s: Annotated[float, Field(gt=0)]


class TriggerConfig(_Frozen):
    drift: DriftTrigger | None = None
    quality: QualityTrigger | None = None
    schedule: ScheduleTrigger | None = None


class DatasetConfig(_Frozen):
    """Which traffic the trainer gets (see ``aiscale data export``)."""

    since: str = "7d"
    until: str | None = None
    with_feedback: bool = True
    labeled_only: bool = False
    #: Only feedback from these key ids (``admin``: any admin key) labels the dataset;
    #: empty: all feedback. Labels come from clients, so choose whom to learn from.
    label_sources: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = ()
    validation_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    format: Literal["parquet", "jsonl"] = "parquet"


class CanaryConfig(_Frozen):
    """The rollout plan of the new version (the admin API's rollout body)."""

    steps: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    min_step_duration_s: Annotated[float, Field(ge=0)] = 30.0
    min_requests: Annotated[int, Field(ge=1)] = 500
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05


class RetrainConfig(_Frozen):
    """The retraining of one deployment: triggers, dataset, trainer and canary plan.

    Exactly one of ``command`` (argv, with ``{dataset}`` and ``{output}`` placeholders) and
    ``callable`` (``package.module:function``) names the trainer, unless one is passed to
    :func:`run_cycle`. ``runtime``/``version_config`` default to those of the serving version."""

    deployment: str
    triggers: TriggerConfig = TriggerConfig()
    dataset: DatasetConfig = DatasetConfig()
    command: tuple[str, ...] | None = None
    callable: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    timeout_s: Annotated[float, Field(gt=0)] = 3600.0
    output_name: Annotated[str, Field(pattern=r"^[\w.-]+$")] = "model.joblib"
    runtime: str | None = None
    version_config: dict[str, Any] | None = None
    rollout: CanaryConfig = CanaryConfig()

    @model_validator(mode="after")
    def _one_trainer(self) -> RetrainConfig:
        if self.command is not None and self.callable is not None:
            raise ValueError("give either command or callable, not both")
        if self.command is not None and not self.command:
            raise ValueError("command must not be empty")
        return self

    @classmethod
    def from_dict(cls, data: Any) -> RetrainConfig:
        """Validate plain data; ``ConfigError`` names the dotted path of the bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in first["loc"]) or "retrain"
            raise ConfigError(f"{path}: {first['msg']}", field=path) from None


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one cycle saw and did. ``rollout`` is the admin API's last rollout status."""

    deployment: str
    is_triggered: bool
    reasons: tuple[str, ...]
    notes: tuple[str, ...] = ()
    run_dir: Path | None = None
    version: str | None = None
    rollout: dict[str, Any] | None = None
    reports: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "is_triggered": self.is_triggered,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "run_dir": None if self.run_dir is None else str(self.run_dir),
            "version": self.version,
            "rollout_status": None if self.rollout is None else self.rollout.get("status"),
            "reports": self.reports,
        }


def run_cycle(
    config: RetrainConfig,
    *,
    data_dir: Path,
    url: str,
    registry: SqlRegistry,
    artifacts: ArtifactStore,
    now: dt.datetime,
    key: str | None = None,
    trainer: Trainer | None = None,
    is_forced: bool = False,
    wait_s: float = 0.0,
) -> CycleResult:
    """One check-and-retrain cycle (see the module docstring).

    With ``is_forced`` the triggers are evaluated and reported but a retraining happens
    regardless. ``wait_s`` > 0 waits that long for the rollout's verdict. Raises
    ``AiscaleError`` when the trainer fails or writes nothing, ``ConfigError`` when no trainer
    is configured, and what the registry or the admin API raise."""
    train = trainer or _configured_trainer(config)
    name = config.deployment
    admin = AdminClient(url, key)
    serving = admin.describe(name)
    active = admin.active_rollout(name)
    if active is not None:
        return CycleResult(name, False, (), (f"a rollout to {active} is in progress; skipped",))
    base = data_dir / "retrain" / name
    run_dir = base / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
    reports: dict[str, str] = {}
    reasons, notes = _evaluate(config, data_dir, run_dir, now, base, reports)
    if is_forced:
        reasons.append("forced")
    if not reasons:
        return CycleResult(name, False, (), tuple(notes), reports=reports)
    logger.info("retraining %s: %s", name, "; ".join(reasons))
    dataset = config.dataset
    examples = load_examples(
        data_dir,
        name,
        parse_period(f"{dataset.since}..{dataset.until or ''}", now, field="dataset.since"),
        label_sources=dataset.label_sources,
    )
    exported = export_dataset(
        examples,
        run_dir / "dataset",
        ExportOptions(
            format=dataset.format,
            with_feedback=dataset.with_feedback,
            is_labeled_only=dataset.labeled_only,
            validation_fraction=dataset.validation_fraction,
        ),
        created_at=now,
    )
    output = run_dir / "output" / config.output_name
    output.parent.mkdir(parents=True, exist_ok=True)
    train(exported.out_dir, output)
    if not output.exists():
        raise AiscaleError(f"the trainer finished but wrote nothing at {output}", field="output")
    serving_version = registry.get_version(serving["model"], serving["version"])
    record = register_with_artifact(
        registry,
        artifacts,
        serving["model"],
        runtime=config.runtime or serving["runtime"],
        uri=str(output),
        config=config.version_config if config.version_config is not None
        else dict(serving_version.config or {}),
        metadata={
            "retrained_from": serving["version"],
            "reasons": reasons,
            "run_dir": str(run_dir),
            "dataset": exported.datasheet["counts"],
        },
        # The trainer the operator configured wrote it: trusted, pickle or not.
        is_pickle_allowed=True,
        registered_by="retrain",
    )
    version = str(record.version)
    _save_state(base, now, version, reasons)
    plan = config.rollout
    status = admin.start_rollout(
        name,
        {
            "version": version,
            "steps": list(plan.steps),
            "interval_s": plan.interval_s,
            "min_step_duration_s": plan.min_step_duration_s,
            "min_requests": plan.min_requests,
            "alpha": plan.alpha,
        },
    )
    if wait_s > 0:
        status = admin.wait_rollout(name, wait_s)
    return CycleResult(name, True, tuple(reasons), tuple(notes), run_dir, version, status, reports)


def _evaluate(
    config: RetrainConfig,
    data_dir: Path,
    run_dir: Path,
    now: dt.datetime,
    base: Path,
    reports: dict[str, str],
) -> tuple[list[str], list[str]]:
    """The reasons to retrain now, and notes on triggers that could not be evaluated."""
    name = config.deployment
    reasons: list[str] = []
    notes: list[str] = []
    triggers = config.triggers
    if triggers.drift is not None:
        drift = triggers.drift
        try:
            current = load_examples(
                data_dir, name, parse_period(drift.current, now, field="triggers.drift.current")
            )
            reference = load_reference(drift.reference, data_dir, name, now)
            report, ref, cur = compare(
                reference, current, alpha=drift.alpha, correction=drift.correction
            )
        except InvalidInput as exc:
            notes.append(f"drift not checked: {exc.message}")
        else:
            paths = write_drift_report(
                report, ref, cur, run_dir / "drift",
                {"deployment": name, "reference": reference.source,
                 "current": current.period.describe()},
            )  # fmt: skip
            reports["drift"] = str(paths["html"])
            counted = [f for f in report.drifted if not drift.features or f in drift.features]
            if counted:
                reasons.append(f"drift in {', '.join(counted)}")
    if triggers.quality is not None:
        quality = triggers.quality
        try:
            window = parse_period(quality.window, now, field="triggers.quality.window")
            checked = check_examples(
                load_examples(data_dir, name, window), load_expectations(quality.expectations)
            )
        except InvalidInput as exc:
            notes.append(f"quality not checked: {exc.message}")
        else:
            paths = write_quality_report(
                checked, run_dir / "quality", {"deployment": name, "window": window.describe()}
            )
            reports["quality"] = str(paths["html"])
            if len(checked.failed) > quality.max_failed_checks:
                failed = ", ".join(c.name for c in checked.failed)
                reasons.append(f"{len(checked.failed)} quality checks failed ({failed})")
    if triggers.schedule is not None:
        last = _last_run(base, now)
        if last is None:
            reasons.append("scheduled: no retraining yet")
        elif (now - last).total_seconds() >= triggers.schedule.every_s:
            reasons.append(f"scheduled: last retraining at {last.isoformat()}")
    return reasons, notes


def _configured_trainer(config: RetrainConfig) -> Trainer:
    if config.command is not None:
        return CommandTrainer(config.command, config.timeout_s)
    if config.callable is not None:
        module_name, _, attr = config.callable.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"cannot import {config.callable!r}: {exc}", field="callable"
            ) from None
        if not callable(function):
            raise ConfigError(f"{config.callable!r} is not callable", field="callable")
        trainer: Trainer = function
        return trainer
    raise ConfigError("no trainer: configure command or callable", field="command")


class CommandTrainer:
    """Runs the retraining command; its output goes to ``train.log`` beside the dataset."""

    def __init__(self, argv: tuple[str, ...], timeout_s: float) -> None:
        self.argv = argv
        self.timeout_s = timeout_s

    def __call__(self, dataset_dir: Path, output_path: Path) -> None:
        args = [
            a.replace("{dataset}", str(dataset_dir)).replace("{output}", str(output_path))
            for a in self.argv
        ]
        env = {
            **os.environ,
            "AISCALE_DATASET_DIR": str(dataset_dir),
            "AISCALE_OUTPUT_PATH": str(output_path),
        }
        log_path = dataset_dir.parent / "train.log"
        try:
            with open(log_path, "wb") as log:
                finished = subprocess.run(
                    args, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=self.timeout_s,
                    check=False,
                )  # fmt: skip
        except FileNotFoundError:
            raise ConfigError(f"the retraining command {args[0]!r} was not found",
                              field="command") from None  # fmt: skip
        except subprocess.TimeoutExpired:
            raise AiscaleError(
                f"the retraining command ran over {self.timeout_s:g} s; see {log_path}",
                field="command",
            ) from None
        if finished.returncode != 0:
            tail = log_path.read_text(errors="replace")[-500:].strip()
            raise AiscaleError(
                f"the retraining command exited with status {finished.returncode}; "
                f"see {log_path}: {tail}",
                field="command",
            )


def _last_run(base: Path, now: dt.datetime) -> dt.datetime | None:
    try:
        state = json.loads((base / "state.json").read_text())
        return parse_time(str(state["last_run"]), now)
    except (FileNotFoundError, KeyError, ValueError, InvalidInput):
        return None


def _save_state(base: Path, now: dt.datetime, version: str, reasons: list[str]) -> None:
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / "state.json.tmp"
    tmp.write_text(
        json.dumps({"last_run": now.isoformat(), "version": version, "reasons": reasons})
    )
    os.replace(tmp, base / "state.json")
