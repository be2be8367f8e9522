"""Run a suite of audit metrics on a baseline and a candidate, and compare them.

A suite is a list of metric module names. Each module follows :mod:`tether.audit.base`:

* ``evaluate(model, *, limit)``: run once on the baseline and once on the candidate; each
  result becomes a :class:`Comparison` with both values, their bootstrap intervals, and the change
  candidate - baseline with its (paired, when the probes align by ``id``) interval;
* ``evaluate_pair(baseline, candidate, *, limit)``: metrics that are already a comparison (drift);
  the value is the change, and there is no baseline column.

``regression`` is set when the change's 95% interval lies entirely on the bad side of 0 (as told
by ``higher_is_better``). A module that fails is recorded in ``AuditRun.errors`` and the others
still run, so one broken metric does not cost a 5-minute audit.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

from tether.audit.base import AuditModel, MetricResult, with_judge
from tether.audit.bootstrap import DEFAULT_RESAMPLES, Interval, bootstrap_interval, delta_test
from tether.errors import ConfigError

_METRICS = "tether.audit.metrics."
_ALL = [_METRICS + name for name in (
    "refusal_calibration", "toxicity", "drift",  # this file's companions
    "bias", "sycophancy", "jailbreak", "memorization", "cot_monitor",
)]


SUITES: dict[str, list[str]] = {
    "default": _ALL,
    "quick": _ALL,  # the same metrics on few probes: for trainer hooks and tests
    # adds the representation audit (ablations generate answers several times: minutes more)
    "deep": _ALL + [_METRICS + "representations"],
}
# Probes per set when --limit is not given: None lets each module use its own default sizes,
# chosen so the default suite takes minutes on 2 CPU cores (benchmarks/audit_speed.py).
SUITE_LIMITS: dict[str, int | None] = {"default": None, "quick": 6, "deep": None}


@dataclass
class Comparison:
    """One metric on both models."""

    name: str
    module: str
    unit: str
    higher_is_better: bool | None
    candidate: MetricResult
    candidate_ci: Interval
    change: float
    change_ci: Interval
    baseline: MetricResult | None = None  # None for pair metrics (drift)
    baseline_ci: Interval | None = None
    paired: bool = False
    p_value: float = math.nan  # bootstrap, "no change"; NaN for pair metrics
    description: str = ""  # one line, from the module's DESCRIPTIONS
    flag_above: float | None = None  # the module's FLAG_ABOVE: flagged above this without a gate

    @property
    def n(self) -> int:
        """Probes behind the change: the fewer of baseline's and candidate's."""
        return min(len(self.candidate.items), len(self.baseline.items) if self.baseline is not None
                   else len(self.candidate.items))

    @property
    def above_default(self) -> bool:
        """A pair metric (drift) above its module's default flag level."""
        return self.flag_above is not None and not math.isnan(self.change) and self.change > self.flag_above

    @property
    def regression(self) -> bool:
        """The change's interval lies entirely on the worse side of 0."""
        if self.higher_is_better is None or math.isnan(self.change_ci.low):
            return False
        return self.change_ci.high < 0 if self.higher_is_better else self.change_ci.low > 0


@dataclass
class AuditRun:
    suite: list[str]
    limit: int | None
    comparisons: list[Comparison] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per module, both models
    errors: dict[str, str] = field(default_factory=dict)  # module -> error text
    judge_guarantee: dict | None = None  # a calibrated refusal judge's bound (tether/judges/conformal.py)

    def changes(self) -> dict[str, float]:
        return {c.name: c.change for c in self.comparisons}

    def evidence(self) -> dict[str, int]:
        """Probes behind each change: the fewer of baseline's and candidate's."""
        return {c.name: c.n for c in self.comparisons}

    def units(self) -> dict[str, str]:
        return {c.name: c.unit for c in self.comparisons}


def resolve_suite(suite: str | Sequence[str]) -> list[str]:
    if isinstance(suite, str):
        if suite not in SUITES:
            raise ConfigError(f"unknown audit suite {suite!r}; choose one of {', '.join(SUITES)}")
        return list(SUITES[suite])
    return list(suite)


def declared_metrics(modules: Sequence[str]) -> tuple[dict[str, str | None], bool]:
    """Metric names (with units where declared) that ``modules`` say they report, from each
    module's ``METRICS`` (a dict name -> unit, or a list of names); and whether every module
    declared them, so a gate on an unknown name can be refused before anything runs."""
    units: dict[str, str | None] = {}
    complete = True
    for name in modules:
        try:
            declared = getattr(importlib.import_module(name), "METRICS", None)
        except Exception:  # reported when the suite runs
            declared = None
        if declared is None:
            complete = False
        elif isinstance(declared, dict):
            units.update(declared)
        else:
            units.update({metric: None for metric in declared})
    return units, complete


def compare(baseline: MetricResult, candidate: MetricResult, module: str, *,
            resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Comparison:
    change_ci, paired, p_value = delta_test(baseline, candidate, resamples=resamples, seed=seed)
    return Comparison(p_value=p_value,
        name=candidate.name, module=module, unit=candidate.unit,
        higher_is_better=candidate.higher_is_better,
        candidate=candidate, candidate_ci=bootstrap_interval(candidate, resamples=resamples, seed=seed),
        change=candidate.value - baseline.value, change_ci=change_ci,
        baseline=baseline, baseline_ci=bootstrap_interval(baseline, resamples=resamples, seed=seed),
        paired=paired)


def compare_pair(result: MetricResult, module: str, *, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> Comparison:
    interval = bootstrap_interval(result, resamples=resamples, seed=seed)
    return Comparison(name=result.name, module=module, unit=result.unit,
                      higher_is_better=result.higher_is_better, candidate=result,
                      candidate_ci=interval, change=result.value, change_ci=interval, paired=True)


def run_module(module_name: str, baseline: AuditModel, candidate: AuditModel, *, limit: int | None,
               resamples: int = DEFAULT_RESAMPLES, seed: int = 0, judge=None,
               baseline_cache: dict | None = None) -> list[Comparison]:
    module = importlib.import_module(module_name)
    if hasattr(module, "evaluate_pair"):
        return [_annotate(compare_pair(r, module_name, resamples=resamples, seed=seed), module)
                for r in module.evaluate_pair(baseline, candidate, limit=limit)]
    extra = with_judge(module.evaluate, judge)
    key = (module_name, baseline.name, getattr(baseline, "path", ""), limit)
    if baseline_cache is not None and key in baseline_cache:
        baseline_results = baseline_cache[key]
    else:
        baseline_results = module.evaluate(baseline, limit=limit, **extra)
        if baseline_cache is not None:
            baseline_cache[key] = baseline_results
    base = {r.name: r for r in baseline_results}
    cand = module.evaluate(candidate, limit=limit, **extra)
    return [_annotate(compare(base[r.name], r, module_name, resamples=resamples, seed=seed), module)
            for r in cand if r.name in base]


def _annotate(comparison: Comparison, module) -> Comparison:
    """The module's one-line description and default flag level for this metric, if it has them."""
    comparison.description = getattr(module, "DESCRIPTIONS", {}).get(comparison.name, "")
    comparison.flag_above = getattr(module, "FLAG_ABOVE", {}).get(comparison.name)
    return comparison


def run_suite(baseline: AuditModel, candidate: AuditModel, suite: str | Sequence[str] = "default", *,
              limit: int | None = None, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
              strict: bool = False, log=None, judge=None, baseline_cache: dict | None = None,
              module_limits: dict[str, int] | None = None) -> AuditRun:
    """Every module of ``suite`` on both models. ``limit`` caps probes per probe set (default: the
    suite's ``SUITE_LIMITS`` entry); ``module_limits`` (module name -> limit) overrides it for the
    modules it names. ``strict`` re-raises a module's error instead of recording it.
    ``log(message)`` is called after each module with its timing. ``judge``: the refusal judge for
    the metrics that count refusals (default: theirs, the default refusal judge). ``baseline_cache``:
    a dict the baseline's results are kept in (by module, baseline name and path, limit) and read
    from on the next call, so several candidates audited against one baseline (the consistency demo's
    seeds) generate its answers once; the metrics' answers are greedy, so they would be the same.
    Pair metrics (drift) read both models and are always run."""
    modules = resolve_suite(suite)
    if limit is None and isinstance(suite, str):
        limit = SUITE_LIMITS.get(suite)
    run = AuditRun(suite=modules, limit=limit)
    if judge is not None and hasattr(judge, "guarantee"):
        run.judge_guarantee = judge.guarantee()
    for name in modules:
        start = time.perf_counter()
        try:
            module_limit = (module_limits or {}).get(name, limit)
            run.comparisons.extend(run_module(name, baseline, candidate, limit=module_limit, resamples=resamples,
                                              seed=seed, judge=judge, baseline_cache=baseline_cache))
        except Exception as error:
            if strict:
                raise
            run.errors[name] = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=-3)}"
        run.seconds[name] = time.perf_counter() - start
        if log is not None:
            status = "failed" if name in run.errors else "done"
            log(f"{name.removeprefix(_METRICS)}: {status} in {run.seconds[name]:.1f} s")
    return run
