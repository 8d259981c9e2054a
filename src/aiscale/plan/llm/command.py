"""``aiscale plan --llm``: parse the command's arguments, plan, write the report.

Turns strings and paths into ``plan_llm``'s inputs, raising ``InvalidInput``/``ConfigError``
(one CLI line each) for anything malformed, then writes the report when a folder is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiscale.errors import InvalidInput
from aiscale.plan.llm.catalog import ACCELERATORS, MODELS
from aiscale.plan.llm.planner import LlmPlanResult, plan_llm
from aiscale.plan.llm.profile import load_llm_profile
from aiscale.plan.llm.report import write_llm_report
from aiscale.plan.llm.workload import read_token_trace

__all__ = ["DEFAULT_REQUESTS_PER_USER", "plan_llm_command"]

#: Chat requests per user per day when none is given: 20 (a day of 1M users is 20M).
DEFAULT_REQUESTS_PER_USER = 20.0


def _users(text: str) -> list[int]:
    try:
        users = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInput(f"--users must be whole numbers, got {text!r}", field="users") from None
    if not users or any(u < 1 for u in users):
        raise InvalidInput("--users needs at least one count >= 1", field="users")
    return users


def plan_llm_command(
    *,
    users: str,
    requests_per_user: float | None,
    model: str,
    ttft_ms: float,
    itl_ms: float,
    slo_target: float,
    trace: Path | None,
    hardware: str | None,
    step_s: float,
    llm_profile: Path | None,
    report: Path | None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> LlmPlanResult:
    """Plan (``plan_llm``) from CLI values; write the report into ``report`` if given."""
    phases = _users(users)
    if model not in MODELS:
        raise InvalidInput(
            f"unknown model {model!r}; expected one of {', '.join(MODELS)}", field="model"
        )
    if not (ttft_ms > 0 and itl_ms > 0):
        raise InvalidInput("--ttft-ms and --itl-ms must be > 0", field="ttft_ms")
    if not 0 < slo_target <= 1:
        raise InvalidInput("--slo-target must be in (0, 1]", field="slo_target")
    if not step_s > 0:
        raise InvalidInput("--step-s must be > 0", field="step_s")
    per_user = DEFAULT_REQUESTS_PER_USER if requests_per_user is None else requests_per_user
    if not per_user > 0:
        raise InvalidInput("--requests-per-user must be > 0", field="requests_per_user")
    kinds = None
    if hardware:
        kinds = tuple(h.strip() for h in hardware.split(",") if h.strip())
        unknown = [h for h in kinds if h not in ACCELERATORS]
        if unknown:
            raise InvalidInput(
                f"unknown hardware {unknown[0]!r}; expected some of {', '.join(ACCELERATORS)}",
                field="hardware",
            )
    profile = load_llm_profile(llm_profile) if llm_profile is not None else None
    if profile is not None and profile.model != model:
        raise InvalidInput(
            f"--llm-profile is of {profile.model!r}, not {model!r}", field="llm_profile"
        )
    mix = times = None
    label = "synthetic daily cycle with bursts"
    if trace is not None:
        requests = read_token_trace(trace)
        mix, times = requests.mix(), requests.times_s
        label = f"the shape and token mix of {trace.name}, stretched to a day"
    result = plan_llm(
        phases,
        per_user,
        model,
        ttft_slo_s=ttft_ms / 1000.0,
        itl_slo_s=itl_ms / 1000.0,
        slo_target=slo_target,
        mix=mix,
        trace_times=times,
        traffic_label=label,
        hardware=kinds,
        profile=profile,
        step_s=step_s,
        on_progress=on_progress,
    )
    if report is not None:
        result = write_llm_report(result, report)
    return result
