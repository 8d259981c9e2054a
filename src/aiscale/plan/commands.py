"""The functions behind ``aiscale profile``, ``aiscale simulate`` and ``aiscale plan``.

Each takes the command's flags as plain arguments, checks them (``InvalidInput`` naming the
flag's field), and returns a value the CLI prints or renders. They never print, exit or
parse argv: ``cli.py`` does that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiscale.errors import ConfigError, InvalidInput, NotFound
from aiscale.plan.calibration import calibrate_server, repeat_figures
from aiscale.plan.catalog import derive_profile, load_catalog
from aiscale.plan.oracle_search import search_oracle
from aiscale.plan.planner import (
    POLICY_NAMES,
    SHAPES,
    PlanResult,
    ProgressCallback,
    build_policy,
    choose_mode,
    plan,
    simulation_config,
    size_replica,
    traffic_for,
)
from aiscale.plan.profile import ModelProfile, load_profile, save_profile
from aiscale.plan.profiling import (
    DEFAULT_BATCH_SIZES,
    alone_figures,
    median_profile,
    profile_model,
)
from aiscale.plan.repeats import MIN_REPEATS, STEADY_REPEAT_SPREAD, RepeatRecord
from aiscale.plan.report import write_report
from aiscale.plan.simulator import simulate
from aiscale.plan.strategies import REDUNDANCY_FROM_USERS
from aiscale.plan.traffic import SCALE_MODES, ArrivalCounts, Arrivals, load_trace

#: Repeats ``aiscale profile`` takes by default (``repeats.py``).
DEFAULT_REPEATS = 3


def profile_command(
    model: str,
    out: str | Path,
    *,
    runtime: str | None = None,
    config: Mapping[str, Any] | None = None,
    hardware: str | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seconds_per_size: float = 1.0,
    is_server_measured: bool = True,
    server_seconds_per_level: float = 5.0,
    num_threads: int | None = None,
    repeats: int = DEFAULT_REPEATS,
    server_data_dir: str | Path | None = None,
) -> ModelProfile:
    """``aiscale profile MODEL --out PROFILE``: measure and write the profile JSON.

    ``repeats`` times, interleaved: the model alone (``profiling.profile_model``, a fresh
    process each time), then, unless ``is_server_measured`` is false, one pass of the server
    calibration through a real ``aiscale serve MODEL`` on this machine
    (``calibration.calibrate_server``, one server for all passes; the bundled minilm only,
    whose endpoint the load generator knows: other models get ``server: null``). Each stored
    figure is the median of its repeats and ``repeats`` records their spread
    (``RepeatRecord``). ``server_data_dir`` is where the calibration's server writes its
    data (its capture log: the disk probed). ``hardware`` other than this machine's
    derives the estimate from the measured profile at the end. ``num_threads`` is what each
    replica will run with (``aiscale serve --num-threads``); by default the threads
    ``aiscale serve`` gives its one replica (all cores).
    """
    if server_seconds_per_level <= 0:
        raise InvalidInput("must be > 0", field="server_seconds_per_level")
    if num_threads is not None and num_threads < 1:
        raise InvalidInput(f"--num-threads must be >= 1, got {num_threads}", field="num_threads")
    if repeats < 1:
        raise InvalidInput(f"--repeats must be >= 1, got {repeats}", field="repeats")
    if server_data_dir is not None and not Path(server_data_dir).is_dir():
        raise InvalidInput(
            f"--server-data-dir {server_data_dir} is not a folder", field="server_data_dir"
        )
    runs: list[ModelProfile] = []

    def measure_alone(_: int = 0) -> ModelProfile:
        runs.append(
            profile_model(
                model,
                runtime=runtime,
                config=config,
                batch_sizes=batch_sizes,
                min_seconds_per_size=seconds_per_size,
                num_threads=num_threads,
            )
        )
        return runs[-1]

    terms = None
    if is_server_measured and model == "minilm" and runtime in (None, "minilm"):
        terms = calibrate_server(
            model,
            measure_alone(),
            seconds_per_level=server_seconds_per_level,
            num_threads=num_threads,
            passes=repeats,
            before_pass=lambda index: runs[0] if index == 0 else measure_alone(),
            data_parent=server_data_dir,
        )
    else:
        for _ in range(repeats):
            measure_alone()
    figures = alone_figures(runs) + ([] if terms is None else repeat_figures(terms))
    profile = replace(
        median_profile(runs),
        server=terms,
        repeats=RepeatRecord(count=repeats, figures=tuple(figures)),
    )
    if hardware is not None and hardware != profile.hardware:
        catalog = load_catalog()
        if hardware not in catalog:
            raise NotFound(f"hardware {hardware!r} is not in the catalog", field="hardware")
        profile = derive_profile(profile, hardware, catalog)
    save_profile(profile, out)
    return profile


def profile_steadiness(profile: ModelProfile) -> tuple[str | None, str | None]:
    """``(unsteady, unknown)``: why ``profile`` was measured on an unsteady machine (its
    repeats spread more than ``STEADY_REPEAT_SPREAD`` on a checked figure, its speed drifted
    or the hypervisor stole CPU: ``RepeatRecord.unsteadiness``,
    ``ServerTerms.unsteadiness``), and why its steadiness is unknown (no repeats recorded:
    written before ``aiscale profile --repeats``, or from one repeat); each None when not
    so."""
    reasons = []
    if profile.repeats is not None and profile.repeats.is_informative:
        spread = profile.repeats.unsteadiness()
        if spread is not None:
            reasons.append(spread)
    if profile.server is not None:
        drift = profile.server.unsteadiness()
        if drift is not None:
            reasons.append(drift)
    unknown = None
    if profile.repeats is None:
        unknown = "it records no repeats (written before aiscale profile --repeats)"
    elif not profile.repeats.is_informative:
        unknown = f"it was measured {profile.repeats.count} time(s), under {MIN_REPEATS}"
    return ("; ".join(reasons) or None), unknown


def checked_profile(
    path: str | Path, hardware: str | None, *, is_unsteady_accepted: bool
) -> tuple[ModelProfile, list[str]]:
    """The profile at ``path`` (derived for ``hardware``) and the warnings to show with
    results made from it. A profile measured on an unsteady machine (``profile_steadiness``)
    is refused with ``InvalidInput`` (field ``profile``): results from it can be off by as
    much, and would look as sure as any other. ``is_unsteady_accepted`` (``--accept-
    unsteady``) uses it anyway and warns; a profile whose steadiness is unknown is used with
    a warning."""
    measured = _load_profile_arg(path, None)
    unsteady, unknown = profile_steadiness(measured)
    warnings = []
    if unsteady is not None:
        if not is_unsteady_accepted:
            raise InvalidInput(
                f"profile {path} was measured on an unsteady machine ({unsteady}; checked "
                f"figures must agree within {STEADY_REPEAT_SPREAD:.0%}); profile again when "
                "the machine is quiet, or pass --accept-unsteady",
                field="profile",
            )
        warnings.append(
            f"the profile was measured on an unsteady machine ({unsteady}); the figures can "
            "be off by as much"
        )
    if unknown is not None:
        warnings.append(
            f"the steadiness of profile {path} is unknown: {unknown}; profile again with "
            f"aiscale profile --repeats {DEFAULT_REPEATS} to know it"
        )
    return _derived(measured, hardware), warnings


def _load_profile_arg(path: str | Path, hardware: str | None) -> ModelProfile:
    if not Path(path).is_file():
        raise InvalidInput(f"profile {path} does not exist", field="profile")
    try:
        profile = load_profile(path)
    except ConfigError as exc:
        raise InvalidInput(f"profile {path}: {exc.message}", field="profile") from exc
    return _derived(profile, hardware)


def _derived(profile: ModelProfile, hardware: str | None) -> ModelProfile:
    """``profile`` as measured, or estimated for ``hardware`` (``InvalidInput`` naming the
    hardware when the catalog lacks it)."""
    if hardware is None or hardware == profile.hardware:
        return profile
    catalog = load_catalog()
    if hardware not in catalog:
        raise InvalidInput(
            f"hardware {hardware!r} is not in the catalog ({', '.join(catalog)})",
            field="hardware",
        )
    return derive_profile(profile, hardware, catalog)


def _positive(value: float | None, field: str, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise InvalidInput(f"--{field.replace('_', '-')} must be > 0, got {value}", field=field)


def simulate_command(
    *,
    profile: str | Path,
    policy: str,
    slo_p99_ms: float,
    trace: str | Path | None = None,
    users: int | None = None,
    requests_per_user: float | None = None,
    shape: str = "daily",
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    duration_s: float | None = None,
    mode: str = "auto",
    replicas: int | None = None,
    hardware: str | None = None,
    startup_s: float | None = None,
    decision_interval_s: float = 10.0,
    seed: int = 0,
    max_batch_size: int | None = None,
    scale_by: str = "poisson",
    is_unsteady_accepted: bool = False,
) -> dict[str, Any]:
    """``aiscale simulate``: one policy over a trace or synthetic users; returns the JSON
    object (``p50_ms``, ``p99_ms``, ``slo_attainment`` 0-1, ``replica_hours``, ``cost_usd``,
    ``requests``, ``warnings``, and more). Traffic is either ``trace`` (stretched by
    ``time_scale``; with ``rate_scale`` other than 1 scaled as ``scale_by`` says:
    ``poisson``, a non-homogeneous Poisson process over the trace's per-minute rate, the
    autoscaling benchmark's model; ``copy``, each request copied or thinned:
    ``traffic.scale_trace``) or ``users`` x ``requests_per_user`` a day with ``shape``.
    The policy is configured from the profile and the SLO (``planner`` docstring);
    ``replicas`` fixes the static count (default: enough for the peak); ``max_batch_size``
    fixes the batch (default: ``sizing.size_replica``'s rule). ``server_terms`` in the result
    says whether the profile's server terms were applied (``ServerTerms``). An unsteady
    profile is refused unless ``is_unsteady_accepted`` (``checked_profile``).
    """
    if policy not in POLICY_NAMES:
        raise InvalidInput(
            f"unknown policy {policy!r}; expected one of {', '.join(POLICY_NAMES)}", field="policy"
        )
    _positive(slo_p99_ms, "slo_p99_ms")
    _positive(rate_scale, "rate_scale")
    _positive(time_scale, "time_scale")
    _positive(duration_s, "duration_s")
    _positive(startup_s, "startup_s", allow_zero=True)
    _positive(decision_interval_s, "decision_interval_s")
    if replicas is not None and (policy != "static" or replicas < 0):
        raise InvalidInput("--replicas is for the static policy, >= 0", field="replicas")
    if mode not in ("exact", "aggregated", "auto"):
        raise InvalidInput(
            f"unknown mode {mode!r}; expected exact, aggregated or auto", field="mode"
        )
    if shape not in SHAPES:
        raise InvalidInput(
            f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}", field="shape"
        )
    if (trace is None) == (users is None):
        raise InvalidInput("give either --trace or --users (not both)", field="trace")
    if scale_by not in SCALE_MODES:
        raise InvalidInput(
            f"unknown --scale-by {scale_by!r}; expected one of {', '.join(SCALE_MODES)}",
            field="scale_by",
        )
    model_profile, warnings = checked_profile(
        profile, hardware, is_unsteady_accepted=is_unsteady_accepted
    )
    sizing = size_replica(
        model_profile, slo_p99_ms, startup_s=startup_s, max_batch_size=max_batch_size
    )
    counts: ArrivalCounts
    exact_input: Arrivals | None = None
    if trace is not None:
        if not Path(trace).is_file():
            raise InvalidInput(f"trace {trace} does not exist", field="trace")
        arrivals = load_trace(
            trace,
            rate_scale=rate_scale,
            time_scale=time_scale,
            duration_s=duration_s,
            scale_by=scale_by,
            jitter_s=max(1.0, time_scale),
            seed=seed,
        )
        counts = arrivals.counts(1.0)
        exact_input = arrivals
        source = str(trace)
    else:
        if requests_per_user is None:
            raise InvalidInput("--users needs --requests-per-user", field="requests_per_user")
        assert users is not None
        if users <= 0:
            raise InvalidInput("--users must be > 0", field="users")
        _positive(requests_per_user, "requests_per_user")
        traffic, natural_s = traffic_for(shape, users, requests_per_user, seed)
        counts = traffic.counts(duration_s or natural_s, step_s=1.0)
        source = f"{users} users x {requests_per_user:g}/day, {shape}"
    run_mode = choose_mode(mode, counts.num_requests)
    spec = load_catalog().get(model_profile.hardware)
    price = spec.price_per_hour("on_demand") if spec is not None else 0.0
    config = simulation_config(
        sizing,
        counts,
        mode=run_mode,
        decision_interval_s=decision_interval_s,
        price_per_replica_hour=price,
        initial_replicas=replicas if policy == "static" else None,
    )
    runs_on = (exact_input or counts.to_arrivals(seed)) if run_mode == "exact" else counts
    oracle_extra: dict[str, Any] = {}
    if policy == "oracle":  # searched in this very simulation; its replay is the answer
        found = search_oracle(runs_on, config)
        result = found.result
        oracle_extra = {
            "oracle_model_bound_replica_hours": found.model_bound_replica_hours,
            "oracle_optimality_gap": found.optimality_gap,
            "oracle_found_by": found.how,
        }
    else:
        chosen = build_policy(
            policy, sizing, counts, decision_interval_s=decision_interval_s, num_replicas=replicas
        )
        result = simulate(runs_on, chosen, config)
    data = result.to_dict()
    del data["timeline"]
    data.update(
        {
            "policy": policy,
            "traffic": source,
            "hardware": model_profile.hardware,
            "estimated_profile": model_profile.estimated,
            # "measured", "estimated", or None: the model alone (a version-1 profile).
            "server_terms": None if model_profile.server is None else model_profile.server.label,
            "max_batch_size": sizing.max_batch_size,
            "capacity_per_replica_per_s": sizing.capacity_per_s,
            "full_capacity_per_replica_per_s": sizing.full_capacity_per_s,
            "max_replicas": max((paid for _, paid, _ in result.timeline), default=0),
            "warnings": warnings,
            **oracle_extra,
        }
    )
    return data


def parse_users(text: str) -> list[int]:
    """``"10000,100000"`` -> ``[10000, 100000]``; ``InvalidInput`` (field ``users``) else."""
    try:
        values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidInput(
            f"--users must be integers separated by commas: {text!r}", field="users"
        ) from exc
    if not values or any(v <= 0 for v in values):
        raise InvalidInput("--users needs one or more counts > 0", field="users")
    return values


def plan_command(
    *,
    users: Sequence[int] | str,
    requests_per_user: float,
    slo_p99_ms: float,
    profile: str | Path,
    report: str | Path | None = None,
    shape: str = "daily",
    hardware: Sequence[str] | None = None,
    slo_target: float = 0.99,
    startup_s: float | None = None,
    duration_s: float | None = None,
    mode: str = "auto",
    seed: int = 0,
    on_progress: ProgressCallback | None = None,
    is_unsteady_profile_allowed: bool = False,
    redundancy_from_users: int | None = None,
) -> PlanResult:
    """``aiscale plan``: plan every phase and, with ``report``, write the report folder.

    A profile measured on an unsteady machine (``checked_profile``: its repeats disagree,
    its speed drifted or the hypervisor stole CPU) is refused with ``InvalidInput`` (field
    ``profile``): a plan from it can be off by as much, and would look as sure as any other.
    ``is_unsteady_profile_allowed`` (``--accept-unsteady``) plans anyway; the reason, and an
    unknown steadiness, go into the result's ``warnings``.
    """
    counts = parse_users(users) if isinstance(users, str) else list(users)
    if not counts or any(u <= 0 for u in counts):
        raise InvalidInput("--users needs one or more counts > 0", field="users")
    _positive(requests_per_user, "requests_per_user")
    _positive(slo_p99_ms, "slo_p99_ms")
    _positive(duration_s, "duration_s")
    if redundancy_from_users is None:
        redundancy_from_users = REDUNDANCY_FROM_USERS
    if redundancy_from_users < 0:
        raise InvalidInput("--redundancy-from-users must be >= 0", field="redundancy_from_users")
    model_profile, warnings = checked_profile(
        profile, None, is_unsteady_accepted=is_unsteady_profile_allowed
    )
    result = plan(
        model_profile,
        counts,
        requests_per_user,
        slo_p99_ms,
        shape=shape,
        hardware=hardware,
        slo_target=slo_target,
        startup_s=startup_s,
        duration_s=duration_s,
        mode=mode,
        seed=seed,
        on_progress=on_progress,
        redundancy_from_users=redundancy_from_users,
        warnings=warnings,
    )
    if report is not None:
        result = write_report(result, report)
    return result
