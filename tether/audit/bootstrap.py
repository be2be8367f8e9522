"""Percentile bootstrap intervals for audit metrics, resampling probes (``MetricResult.items``).

For a result with n items and statistic s, draw B resamples of n items with replacement and
recompute s on each; the 95% interval is the 2.5th and 97.5th percentiles of the B values.

For the change candidate - baseline, when both results hold the same probes (every item has an
``id`` and the id sets match) the resampling is paired: one draw of ids feeds both statistics,
so the probe-to-probe variation they share cancels, and the interval is much narrower than
two independent intervals would suggest. Otherwise baseline and candidate are resampled
independently and the interval is that of the difference.

The same draws give a two-sided bootstrap p-value for "no change": twice the share of resampled
changes on the far side of 0 (at most 1), which the report's Holm correction reads.

Items that are not independent say so with a ``cluster`` key (the jailbreak metric's five wrapped
versions of one request share the request's id): when every item has one, whole clusters are
resampled (a cluster bootstrap), so a request the model always refuses counts once per draw, not five
times, and the interval is not narrower than the data allow.

Seeded (``numpy.random.default_rng(seed)``): the same results and seed give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tether.audit.base import MetricResult

DEFAULT_RESAMPLES = 1000
Statistic = Callable[[Sequence[dict]], float]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_list(self) -> list[float]:
        return [self.low, self.high]


_NAN = Interval(math.nan, math.nan)


def _percentiles(values: list[float], level: float) -> Interval:
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return _NAN
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(low), float(high))


def resample_indices(items: Sequence[dict], rng: np.random.Generator, resamples: int) -> list[np.ndarray]:
    """``resamples`` bootstrap draws of item positions: n items with replacement, or, when every item
    has a ``cluster``, as many clusters as there are with replacement, each bringing all its items."""
    clusters = [row.get("cluster") for row in items]
    if not items or None in clusters:
        return list(rng.integers(0, len(items), size=(resamples, len(items))))
    members: dict = {}
    for position, cluster in enumerate(clusters):
        members.setdefault(cluster, []).append(position)
    groups = list(members.values())
    draws = rng.integers(0, len(groups), size=(resamples, len(groups)))
    return [np.concatenate([groups[g] for g in row]) for row in draws]


def percentile_interval(items: Sequence[dict], statistic: Statistic, *, resamples: int = DEFAULT_RESAMPLES,
                        seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of ``statistic(items)``; (nan, nan) when there are no items."""
    if not items:
        return _NAN
    rng = np.random.default_rng(seed)
    return _percentiles([statistic([items[i] for i in row]) for row in resample_indices(items, rng, resamples)],
                        level)


def bootstrap_interval(result: MetricResult, **kwargs) -> Interval:
    """Interval of ``result.statistic`` over resampled ``result.items``."""
    return percentile_interval(result.items, result.statistic, **kwargs)


def paired_ids(baseline: MetricResult, candidate: MetricResult) -> list | None:
    """The shared probe ids in baseline order, or None when the items cannot be paired."""
    ids_b = [row.get("id") for row in baseline.items]
    ids_c = [row.get("id") for row in candidate.items]
    if not ids_b or None in ids_b or None in ids_c:
        return None
    if len(set(ids_b)) != len(ids_b) or set(ids_b) != set(ids_c) or len(ids_c) != len(ids_b):
        return None
    return ids_b


def delta_interval(baseline: MetricResult, candidate: MetricResult, *, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0, level: float = 0.95) -> tuple[Interval, bool]:
    """Interval of candidate - baseline, and whether it was paired by ``id``."""
    interval, paired, _ = delta_test(baseline, candidate, resamples=resamples, seed=seed, level=level)
    return interval, paired


def p_value_of_zero(deltas: Sequence[float]) -> float:
    """Two-sided bootstrap p-value of "the change is 0": 2 * min(P(d <= 0), P(d >= 0)), at most 1."""
    finite = np.asarray([d for d in deltas if d is not None and math.isfinite(d)], dtype=float)
    if finite.size == 0:
        return math.nan
    return float(min(1.0, 2 * min((finite <= 0).mean(), (finite >= 0).mean())))


def delta_test(baseline: MetricResult, candidate: MetricResult, *, resamples: int = DEFAULT_RESAMPLES,
               seed: int = 0, level: float = 0.95) -> tuple[Interval, bool, float]:
    """Interval of candidate - baseline, whether it was paired by ``id``, and its bootstrap p-value."""
    if not baseline.items or not candidate.items:
        return _NAN, False, math.nan
    rng = np.random.default_rng(seed)
    ids = paired_ids(baseline, candidate)
    deltas = []
    if ids is not None:
        by_id = {row["id"]: row for row in candidate.items}
        cand = [by_id[i] for i in ids]  # aligned with baseline.items
        base = baseline.items
        for row in resample_indices(base, rng, resamples):
            deltas.append(candidate.statistic([cand[i] for i in row])
                          - baseline.statistic([base[i] for i in row]))
        return _percentiles(deltas, level), True, p_value_of_zero(deltas)
    for row_b, row_c in zip(resample_indices(baseline.items, rng, resamples),
                            resample_indices(candidate.items, rng, resamples)):
        deltas.append(candidate.statistic([candidate.items[i] for i in row_c])
                      - baseline.statistic([baseline.items[i] for i in row_b]))
    return _percentiles(deltas, level), False, p_value_of_zero(deltas)
