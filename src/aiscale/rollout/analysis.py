"""Canary analysis: promote, wait, roll back, or say how much more data is needed.

``decide(observation, state, config) -> (decision, state)`` is the pure policy a progressive
rollout consults at every interval of every step. The observation holds, for baseline and canary
over the *same period* (since the current step started), cumulative request and error counts, a
latency histogram and optional custom-metric histograms, plus ``now_s`` and the step.

Tests, each run as an always-valid sequential test (one-sided mSPRT, see ``_stats``) over the
evidence of all steps so far, with the configured ``alpha`` split evenly (Bonferroni) over the
tests, so the chance of ever rolling back a canary that is no worse stays at or below ``alpha``
for the whole rollout, however often the controller looks:

* ``error_rate``: errors / requests, judged exactly given the errors (conditional binomial
  likelihood ratio, mixed over a grid of relative risks: safe with a handful of rare errors);
* ``latency_rank``: Mann-Whitney U on the latency histograms (is the canary slower overall?);
* ``latency_tail``: the same count test on the requests above the pooled p99 (tail
  regressions that barely move the ranks);
* ``metric:<name>``: Mann-Whitney U on a custom metric, direction set by its ``MetricRule``.

An LLM version's requests carry three more metrics (``LLM_METRIC_RULES``, added to a rollout
of an LLM deployment by ``with_llm_metrics``): time to first token and mean inter-token
latency (lower is better), and output tokens of answered requests (higher is better: a
canary that stops early writes shorter answers), plus the users' feedback score when they
give one (higher is better). They are ordinary ``metric:<name>`` tests, and they replace the
two request-latency tests there: a whole answer's latency grows with its length, so a
canary that writes longer answers would fail them without being slower.

A significant test rolls back only when the effect is also material (error rate up by at least
``error_rate_min_increase``; p50 or p99 up by at least the configured fraction; a metric's mean
worse by at least its ``min_effect`` and by ``min_relative_effect`` of the baseline's mean), so
tiny irrelevant differences never roll back. Promotion needs the step's minimum duration and
``min_requests`` per version, with no test saying worse.

Steps with the canary at 100 % have no baseline to compare against; the controller finishes
the rollout instead of asking. This module never does I/O, never reads a clock and never uses
randomness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from aiscale.contracts.histogram import Histogram
from aiscale.errors import ConfigError, InvalidInput
from aiscale.rollout._stats import (
    Evidence,
    count_evidence,
    exceedances,
    log_e_value,
    rank_evidence,
)

__all__ = [
    "FEEDBACK_METRIC",
    "ITL_METRIC",
    "LLM_METRIC_RULES",
    "OUTPUT_TOKENS_METRIC",
    "TTFT_METRIC",
    "AnalysisConfig",
    "AnalysisState",
    "CanaryDecision",
    "CanaryObservation",
    "MetricRule",
    "RolloutStep",
    "TestResult",
    "Verdict",
    "VersionCounts",
    "decide",
    "with_llm_metrics",
]


class Verdict(StrEnum):
    """What the controller should do next."""

    PROMOTE = "promote"
    WAIT = "wait"
    ROLLBACK = "rollback"
    NOT_ENOUGH_DATA = "not_enough_data"


@dataclass(frozen=True, slots=True)
class MetricRule:
    """A custom metric to compare: its name, its good direction, the smallest change that matters.

    ``min_effect`` is in the metric's own units, on the mean (e.g. 0.1 points of a 1-5 score);
    ``min_relative_effect`` a share of the baseline's mean (0.1: 10 % worse), for metrics
    whose scale depends on the model and the machine (time to first token). Both must hold.
    """

    name: str
    is_higher_better: bool
    min_effect: float = 0.0
    min_relative_effect: float = 0.0


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """Tuning of the canary analysis; defaults suit request-level web traffic.

    ``alpha``: bound on the chance of ever rolling back a canary that is no worse, over the whole
    rollout. ``min_requests``: per version and per step; below it the verdict is
    ``not_enough_data`` and no test runs. ``min_metric_samples``: per version; below it a
    histogram test is skipped (reported, not counted). ``rank_tau`` is the effect (probability
    of superiority minus 1/2) the rank tests are tuned to detect fastest; ``relative_risks``
    the grid of canary / baseline rate ratios the count tests (errors, tail) mix over.
    Raises ``ConfigError`` naming the bad field.
    """

    alpha: float = 0.05
    min_requests: int = 500
    min_metric_samples: int = 100
    error_rate_min_increase: float = 0.002
    latency_p50_min_increase: float = 0.10
    latency_p99_min_increase: float = 0.20
    tail_quantile: float = 0.99
    rank_tau: float = 0.05
    relative_risks: tuple[float, ...] = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
    metrics: tuple[MetricRule, ...] = ()
    #: Whether the request latency is judged (``latency_rank``, ``latency_tail``). An LLM's
    #: whole-answer latency grows with the answer's length, so an LLM rollout judges time
    #: to first token and inter-token latency instead (``with_llm_metrics``).
    is_latency_judged: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"alpha must be within (0, 1), not {self.alpha}", field="alpha")
        if self.min_requests < 1:
            raise ConfigError("min_requests must be at least 1", field="min_requests")
        if self.min_metric_samples < 1:
            raise ConfigError("min_metric_samples must be at least 1", field="min_metric_samples")
        for name in (
            "error_rate_min_increase",
            "latency_p50_min_increase",
            "latency_p99_min_increase",
        ):
            if not getattr(self, name) >= 0.0:
                raise ConfigError(f"{name} must be >= 0", field=name)
        if not self.rank_tau > 0.0:
            raise ConfigError("rank_tau must be > 0", field="rank_tau")
        if not self.relative_risks or not all(r > 1.0 for r in self.relative_risks):
            raise ConfigError("relative_risks must be non-empty, each > 1", field="relative_risks")
        if not 0.5 <= self.tail_quantile < 1.0:
            raise ConfigError("tail_quantile must be within [0.5, 1)", field="tail_quantile")
        names = [rule.name for rule in self.metrics]
        for index, rule in enumerate(self.metrics):
            if not rule.name or names.count(rule.name) > 1:
                raise ConfigError(
                    f"metric names must be non-empty and unique ({rule.name!r})",
                    field=f"metrics.{index}.name",
                )
            if not rule.min_effect >= 0.0:
                raise ConfigError("min_effect must be >= 0", field=f"metrics.{index}.min_effect")
            if not rule.min_relative_effect >= 0.0:
                raise ConfigError(
                    "min_relative_effect must be >= 0",
                    field=f"metrics.{index}.min_relative_effect",
                )

    @property
    def test_names(self) -> tuple[str, ...]:
        """The tests this configuration runs; ``alpha`` is split evenly over them."""
        fixed: tuple[str, ...] = ("error_rate",)
        if self.is_latency_judged:
            fixed += ("latency_rank", "latency_tail")
        return fixed + tuple(f"metric:{rule.name}" for rule in self.metrics)

    @property
    def alpha_per_test(self) -> float:
        """Each test's share of ``alpha`` (Bonferroni)."""
        return self.alpha / len(self.test_names)


#: The metrics an LLM version's requests record (``serving/llm``) and their names here.
TTFT_METRIC = "ttft_s"
ITL_METRIC = "itl_s"
OUTPUT_TOKENS_METRIC = "output_tokens"
FEEDBACK_METRIC = "feedback_score"

#: What an LLM canary is judged on besides errors and end-to-end latency: slower to first
#: token or between tokens by 10 %, or answers 10 % shorter (it stops early), or feedback
#: scores 5 % lower, each significant, roll it back.
LLM_METRIC_RULES: tuple[MetricRule, ...] = (
    MetricRule(TTFT_METRIC, is_higher_better=False, min_relative_effect=0.10),
    MetricRule(ITL_METRIC, is_higher_better=False, min_relative_effect=0.10),
    MetricRule(OUTPUT_TOKENS_METRIC, is_higher_better=True, min_relative_effect=0.10),
    MetricRule(FEEDBACK_METRIC, is_higher_better=True, min_relative_effect=0.05),
)


def with_llm_metrics(config: AnalysisConfig) -> AnalysisConfig:
    """``config`` for an LLM rollout: with the LLM rules it does not name already (its own
    rule of the same name wins), and with time to first token and inter-token latency in
    place of the whole request's latency, which a canary writing longer answers would fail
    without being slower."""
    named = {rule.name for rule in config.metrics}
    extra = tuple(rule for rule in LLM_METRIC_RULES if rule.name not in named)
    if not extra and not config.is_latency_judged:
        return config
    return replace(config, metrics=config.metrics + extra, is_latency_judged=False)


@dataclass(frozen=True, slots=True)
class VersionCounts:
    """One version's cumulative counts since the current step started.

    ``latency_s`` holds request latencies in seconds; ``metrics`` maps a metric name to the
    histogram of its samples (e.g. feedback scores); all canary and baseline histograms of the
    same name must share bounds.
    """

    num_requests: int
    num_errors: int
    latency_s: Histogram
    metrics: Mapping[str, Histogram] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RolloutStep:
    """The step the observation belongs to; ``index`` never decreases within one rollout."""

    index: int
    canary_percent: float
    started_s: float
    min_duration_s: float


@dataclass(frozen=True, slots=True)
class CanaryObservation:
    """Baseline and canary over the same period, at time ``now_s`` (seconds, caller's clock)."""

    baseline: VersionCounts
    canary: VersionCounts
    step: RolloutStep
    now_s: float


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test at one look: the numbers behind the verdict.

    ``baseline_value``/``canary_value`` are the compared quantities (error rate, p50 or p99
    latency in seconds, tail share, metric mean) of the current step; ``z`` and ``p_value``
    are over all steps so far; ``p_value`` is the always-valid p-value (1 / e-value), to be
    compared with ``alpha``.
    """

    name: str
    method: str
    num_baseline: int
    num_canary: int
    baseline_value: float
    canary_value: float
    z: float
    p_value: float
    alpha: float
    is_significant: bool
    is_material: bool
    is_skipped: bool
    summary: str

    @property
    def is_worse(self) -> bool:
        """The canary is significantly and materially worse on this test."""
        return self.is_significant and self.is_material and not self.is_skipped


@dataclass(frozen=True, slots=True)
class CanaryDecision:
    """The verdict, a human reason and every test's numbers.

    ``num_requests_needed`` is how many more requests (of the version that lacks most) are
    needed before a verdict other than ``not_enough_data`` is possible; 0 otherwise.
    """

    verdict: Verdict
    reason: str
    tests: tuple[TestResult, ...] = ()
    num_requests_needed: int = 0


@dataclass(frozen=True, slots=True)
class AnalysisState:
    """What the policy carries between looks: evidence of finished steps and of the current one.

    Start a rollout with ``AnalysisState()``.
    """

    step_index: int = -1
    num_looks: int = 0
    finished: Mapping[str, Evidence] = field(default_factory=dict)
    current: Mapping[str, Evidence] = field(default_factory=dict)


def decide(
    observation: CanaryObservation,
    state: AnalysisState,
    config: AnalysisConfig | None = None,
) -> tuple[CanaryDecision, AnalysisState]:
    """Judge the canary against the baseline at this look.

    Raises ``InvalidInput`` for inconsistent counts or a step index that goes backwards.
    """
    config = config or AnalysisConfig()
    _validate(observation, state)
    state = _enter_step(state, observation.step.index)
    state = replace(state, num_looks=state.num_looks + 1)
    base, can = observation.baseline, observation.canary

    needed_b = max(0, config.min_requests - base.num_requests)
    needed_c = max(0, config.min_requests - can.num_requests)
    if needed_b or needed_c:
        parts = [
            f"{who} needs {needed} more requests (has {have} of {config.min_requests})"
            for who, needed, have in (
                ("canary", needed_c, can.num_requests),
                ("baseline", needed_b, base.num_requests),
            )
            if needed
        ]
        decision = CanaryDecision(
            Verdict.NOT_ENOUGH_DATA, "; ".join(parts), (), max(needed_b, needed_c)
        )
        return decision, state

    results: list[TestResult] = []
    current = dict(state.current)
    for test in _tests(observation, config):
        current[test.name] = test.step_evidence
        total = state.finished.get(test.name, Evidence()).plus(test.step_evidence)
        results.append(test.result_of(total))
    state = replace(state, current=current)

    worse = [r for r in results if r.is_worse]
    if worse:
        reason = "canary is worse: " + "; ".join(r.summary for r in worse)
        return CanaryDecision(Verdict.ROLLBACK, reason, tuple(results)), state
    left_s = observation.step.started_s + observation.step.min_duration_s - observation.now_s
    if left_s > 0:
        reason = f"no test says worse yet; {left_s:.0f} s of the step's minimum duration left"
        return CanaryDecision(Verdict.WAIT, reason, tuple(results)), state
    reason = "no test says worse after the minimum duration and samples: " + "; ".join(
        r.summary for r in results
    )
    return CanaryDecision(Verdict.PROMOTE, reason, tuple(results)), state


def _validate(observation: CanaryObservation, state: AnalysisState) -> None:
    for who, counts in (("baseline", observation.baseline), ("canary", observation.canary)):
        if counts.num_requests < 0 or not 0 <= counts.num_errors <= counts.num_requests:
            raise InvalidInput(
                f"{who} counts need 0 <= num_errors <= num_requests "
                f"({counts.num_errors} of {counts.num_requests})",
                field=f"{who}.num_errors",
            )
    if observation.step.index < state.step_index:
        raise InvalidInput(
            f"step index went back from {state.step_index} to {observation.step.index}",
            field="step.index",
        )
    if observation.baseline.latency_s.upper_bounds != observation.canary.latency_s.upper_bounds:
        raise InvalidInput("latency histograms must share bounds", field="canary.latency_s")
    if not math.isfinite(observation.now_s):
        raise InvalidInput("now_s must be finite", field="now_s")


def _enter_step(state: AnalysisState, index: int) -> AnalysisState:
    """On a new step, fold the last evidence seen of the previous one into ``finished``."""
    if index == state.step_index:
        return state
    finished = dict(state.finished)
    for name, evidence in state.current.items():
        finished[name] = finished.get(name, Evidence()).plus(evidence)
    return replace(state, step_index=index, finished=finished, current={})


def _tests(observation: CanaryObservation, config: AnalysisConfig) -> list[_Test]:
    base, can = observation.baseline, observation.canary
    alpha = config.alpha_per_test
    tests: list[_Test] = []

    # Error rate.
    rate_b = base.num_errors / base.num_requests
    rate_c = can.num_errors / can.num_requests
    tests.append(
        _Test(
            "error_rate",
            count_evidence(
                base.num_requests,
                base.num_errors,
                can.num_requests,
                can.num_errors,
                config.relative_risks,
            ),
            _Judge(
                "error_rate",
                "conditional binomial mixture SPRT",
                config.rank_tau,
                alpha,
                base.num_requests,
                can.num_requests,
                rate_b,
                rate_c,
                is_material=rate_c - rate_b >= config.error_rate_min_increase,
                effect=f"{100 * rate_c:.2f}% vs {100 * rate_b:.2f}% errors "
                f"({100 * (rate_c - rate_b):+.2f} points)",
            ),
        )
    )

    if config.is_latency_judged:
        tests.extend(_latency_tests(base, can, config, alpha))

    for rule in config.metrics:
        name = f"metric:{rule.name}"
        hist_b, hist_c = base.metrics.get(rule.name), can.metrics.get(rule.name)
        if hist_b is not None and hist_c is not None and hist_b.upper_bounds != hist_c.upper_bounds:
            raise InvalidInput(
                f"histograms of {rule.name!r} must share bounds",
                field=f"canary.metrics.{rule.name}",
            )
        n_b = hist_b.num_samples if hist_b is not None else 0
        n_c = hist_c.num_samples if hist_c is not None else 0
        mean_b = hist_b.mean() if hist_b is not None else math.nan
        mean_c = hist_c.mean() if hist_c is not None else math.nan
        skip = min(n_b, n_c) < config.min_metric_samples
        evidence = Evidence()
        if not skip and hist_b is not None and hist_c is not None:
            evidence = rank_evidence(hist_b.counts, hist_c.counts)
            if rule.is_higher_better:
                evidence = evidence.flipped()
        worse_by = (mean_b - mean_c) if rule.is_higher_better else (mean_c - mean_b)
        smallest = rule.min_effect
        if rule.min_relative_effect > 0 and math.isfinite(mean_b):
            smallest = max(smallest, rule.min_relative_effect * abs(mean_b))
        tests.append(
            _Test(
                name,
                evidence,
                _Judge(
                    name,
                    "Mann-Whitney U, one-sided mSPRT",
                    config.rank_tau,
                    alpha,
                    n_b,
                    n_c,
                    mean_b,
                    mean_c,
                    is_material=not skip and worse_by > 0 and worse_by >= smallest,
                    effect=f"mean {mean_c:.4g} vs {mean_b:.4g} "
                    f"({'higher' if rule.is_higher_better else 'lower'} is better)",
                    is_skipped=skip,
                ),
            )
        )
    return tests


def _latency_tests(
    base: VersionCounts, can: VersionCounts, config: AnalysisConfig, alpha: float
) -> list[_Test]:
    """``latency_rank`` and ``latency_tail`` on the request latency histograms."""
    tests: list[_Test] = []
    # Latency: ranks (overall shift) and tail share above the pooled p99.
    lat_b, lat_c = base.latency_s, can.latency_s
    n_lat_b, n_lat_c = lat_b.num_samples, can.latency_s.num_samples
    skip = min(n_lat_b, n_lat_c) < config.min_metric_samples
    p50_b, p50_c = lat_b.quantile(0.5), lat_c.quantile(0.5)
    p99_b, p99_c = lat_b.quantile(0.99), lat_c.quantile(0.99)
    p50_up = _relative(p50_c, p50_b)
    p99_up = _relative(p99_c, p99_b)
    p50_text = f"p50 {1000 * p50_c:.1f} ms vs {1000 * p50_b:.1f} ms ({100 * p50_up:+.0f}%)"
    p99_text = f"p99 {1000 * p99_c:.1f} ms vs {1000 * p99_b:.1f} ms ({100 * p99_up:+.0f}%)"
    tests.append(
        _Test(
            "latency_rank",
            Evidence() if skip else rank_evidence(lat_b.counts, lat_c.counts),
            _Judge(
                "latency_rank",
                "Mann-Whitney U, one-sided mSPRT",
                config.rank_tau,
                alpha,
                n_lat_b,
                n_lat_c,
                p50_b,
                p50_c,
                is_material=p50_up >= config.latency_p50_min_increase
                or p99_up >= config.latency_p99_min_increase,
                effect=f"{p50_text}, {p99_text}",
                is_skipped=skip,
            ),
        )
    )
    above_b, above_c = (
        (0, 0) if skip else exceedances(lat_b.counts, lat_c.counts, config.tail_quantile)
    )
    share_b = above_b / n_lat_b if n_lat_b else math.nan
    share_c = above_c / n_lat_c if n_lat_c else math.nan
    tests.append(
        _Test(
            "latency_tail",
            Evidence()
            if skip
            else count_evidence(n_lat_b, above_b, n_lat_c, above_c, config.relative_risks),
            _Judge(
                "latency_tail",
                f"share above pooled p{100 * config.tail_quantile:g}, "
                "conditional binomial mixture SPRT",
                config.rank_tau,
                alpha,
                n_lat_b,
                n_lat_c,
                share_b,
                share_c,
                is_material=p99_up >= config.latency_p99_min_increase,
                effect=f"{100 * share_c:.2f}% vs {100 * share_b:.2f}% of requests in the tail, "
                f"{p99_text}",
                is_skipped=skip,
            ),
        )
    )
    return tests


def _relative(canary: float, baseline: float) -> float:
    """Relative increase of canary over baseline; 0 when either is missing."""
    if math.isnan(canary) or math.isnan(baseline) or baseline <= 0:
        return 0.0
    return canary / baseline - 1.0


@dataclass(frozen=True, slots=True)
class _Judge:
    """Turns a test's accumulated evidence into its ``TestResult``."""

    name: str
    method: str
    tau: float
    alpha: float
    num_baseline: int
    num_canary: int
    baseline_value: float
    canary_value: float
    is_material: bool
    effect: str
    is_skipped: bool = False

    def __call__(self, evidence: Evidence) -> TestResult:
        log_e = log_e_value(evidence, self.tau)
        p_value = min(1.0, math.exp(-log_e)) if log_e > -700 else 1.0
        is_significant = log_e >= math.log(1.0 / self.alpha)
        if self.is_skipped:
            detail = f"skipped, {min(self.num_baseline, self.num_canary)} samples"
        else:
            detail = (
                f"z={evidence.z:.2f}, always-valid p={p_value:.3g} vs alpha "
                f"{self.alpha:.3g}, n={self.num_canary}/{self.num_baseline}"
            )
        summary = f"{self.name}: {self.effect}; {self.method}: {detail}"
        return TestResult(
            self.name,
            self.method,
            self.num_baseline,
            self.num_canary,
            self.baseline_value,
            self.canary_value,
            evidence.z,
            p_value,
            self.alpha,
            is_significant,
            self.is_material,
            self.is_skipped,
            summary,
        )


@dataclass(frozen=True, slots=True)
class _Test:
    name: str
    step_evidence: Evidence
    result_of: _Judge
