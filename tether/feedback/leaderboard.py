"""Bradley-Terry ratings of models from pairwise judgments, with bootstrap intervals.

A battle is two models' candidates judged against each other on one item: a pairwise verdict,
or one of the C(K, 2) pairs a ranking of K candidates implies. Its outcome y for model a is
1 (a won), 0 (b won) or 1/2 (tie or both bad, as in Chatbot Arena). The Bradley-Terry model:

    P(a beats b) = sigmoid(theta_a - theta_b)

fitted by maximum likelihood over all battles, ties counting half a win each way,

    l(theta) = sum_battles y log s(theta_a - theta_b) + (1 - y) log s(theta_b - theta_a)
               - (l2 / 2) |theta|^2

The small L2 term keeps a model that never lost at a finite rating; l(theta) is concave, so
Newton's method with a backtracking line search converges in a handful of steps. Ratings are
shown on the Elo scale, centred so the mean model (or ``anchor``) sits at 1000:

    rating = 1000 + (400 / ln 10) * (theta - mean theta)

so a 400-point gap means 10:1 odds. Intervals: the judgments of one item are correlated (the
same prompt, often the same annotator), so the bootstrap resamples items, not battles, and
refits; the interval is the 2.5th to 97.5th percentile of the refitted ratings. ``rank`` is
1 + the number of models whose lower bound is above this model's upper bound (Chatbot Arena's
rule): models whose intervals overlap share a rank.

Dropped: battles between two candidates of the same model (they say nothing about ratings),
inconsistent AI verdicts (the two orders disagreed: ``agreement.inconsistent_pairs``),
pairwise verdicts on items that do not
have exactly two candidates, and not-rankable rankings. Ties shrink ratings toward each other;
a model that ties often looks closer to the middle than its wins alone suggest.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from tether.feedback.agreement import inconsistent_pairs
from tether.feedback.records import PAIRWISE_SPECIAL, FeedbackItem, Judgment

ELO_SCALE = 400.0 / math.log(10.0)  # rating points per unit of theta
BASE_RATING = 1000.0


@dataclass(frozen=True)
class Battle:
    item_id: str
    model_a: str
    model_b: str
    outcome: float  # for model_a: 1 won, 0 lost, 0.5 tie


def battles_from_judgments(judgments: list[Judgment], items: list[FeedbackItem]) -> list[Battle]:
    """Pairwise verdicts and expanded rankings as battles between candidates' models."""
    by_id = {item.id: item for item in items}
    battles: list[Battle] = []
    for judgment in judgments:
        item = by_id.get(judgment.item_id)
        if item is None:
            continue
        skipped = inconsistent_pairs(judgment)
        models = {candidate.id: candidate.model for candidate in item.candidates}
        if judgment.task == "pairwise" and len(item.candidates) == 2 and not skipped:
            first, second = item.candidates
            winner = judgment.verdict.get("winner")
            outcome = (0.5 if winner in PAIRWISE_SPECIAL else 1.0 if winner == first.id
                       else 0.0 if winner == second.id else None)
            if outcome is not None and first.model != second.model:
                battles.append(Battle(item.id, first.model, second.model, outcome))
        elif judgment.task == "ranking" and "ranks" in judgment.verdict:
            ranks = judgment.verdict["ranks"]
            for a, b in combinations(sorted(c for c in ranks if c in models), 2):
                if models[a] == models[b] or (a, b) in skipped:
                    continue
                outcome = 0.5 if ranks[a] == ranks[b] else float(ranks[a] < ranks[b])
                battles.append(Battle(item.id, models[a], models[b], outcome))
    return battles


def fit_bradley_terry(first: np.ndarray, second: np.ndarray, scores: np.ndarray,
                      counts: np.ndarray, num_models: int, *, l2: float = 1e-3,
                      max_iterations: int = 100, tolerance: float = 1e-10) -> np.ndarray:
    """theta maximizing the tie-as-half Bradley-Terry likelihood, mean zero.

    Each row is a pair of models with ``counts`` battles between them and ``scores`` = the
    first model's wins + ties/2 in them (sufficient statistics: the likelihood only needs these).

    Shape: first, second, scores, counts (P,) -> theta (M,).
    """
    theta = np.zeros(num_models)

    def objective(theta: np.ndarray) -> float:
        diff = theta[first] - theta[second]  # (P,)
        # log s(d) = -log(1 + e^-d), written with logaddexp so large |d| does not overflow
        return float(-(scores * np.logaddexp(0, -diff)).sum()
                     - ((counts - scores) * np.logaddexp(0, diff)).sum()
                     - 0.5 * l2 * (theta ** 2).sum())

    value = objective(theta)
    for _ in range(max_iterations):
        p = 1.0 / (1.0 + np.exp(-(theta[first] - theta[second])))  # (P,) P(first wins)
        residual = scores - counts * p  # (P,) d l / d diff
        gradient = np.bincount(first, residual, num_models) - np.bincount(second, residual, num_models)
        gradient -= l2 * theta
        curvature = counts * p * (1 - p)  # (P,)
        hessian = -l2 * np.eye(num_models)  # (M, M), negative definite
        np.add.at(hessian, (first, first), -curvature)
        np.add.at(hessian, (second, second), -curvature)
        np.add.at(hessian, (first, second), curvature)
        np.add.at(hessian, (second, first), curvature)
        # Newton: theta - H^-1 g. Without l2, H is singular along "shift every theta" (ratings
        # are relative); the least-squares solution is the step orthogonal to that direction.
        step = np.linalg.lstsq(hessian, -gradient, rcond=None)[0]
        size = 1.0
        while size > 1e-8:
            candidate = theta + size * step
            candidate_value = objective(candidate)
            if candidate_value >= value - 1e-12:
                break
            size /= 2
        theta, improvement = candidate, candidate_value - value
        value = candidate_value
        if abs(improvement) < tolerance and np.abs(size * step).max() < 1e-8:
            break
    return theta - theta.mean()


def _pair_statistics(a: np.ndarray, b: np.ndarray, outcome: np.ndarray, weight: np.ndarray,
                     num_models: int) -> tuple[np.ndarray, ...]:
    """Collapse weighted battles into (first, second, scores, counts) per unordered pair."""
    low, high = np.minimum(a, b), np.maximum(a, b)
    score_low = np.where(a == low, outcome, 1.0 - outcome)  # outcome seen from the lower index
    key = low * num_models + high
    unique, index = np.unique(key, return_inverse=True)
    counts = np.bincount(index, weight, len(unique))
    scores = np.bincount(index, weight * score_low, len(unique))
    keep = counts > 0
    return unique[keep] // num_models, unique[keep] % num_models, scores[keep], counts[keep]


def to_ratings(theta: np.ndarray, anchor_index: int | None = None) -> np.ndarray:
    """Elo-scale ratings: mean (or the anchor model) at 1000."""
    centre = theta[anchor_index] if anchor_index is not None else theta.mean()
    return BASE_RATING + ELO_SCALE * (theta - centre)


def leaderboard(judgments: list[Judgment], items: list[FeedbackItem], *, bootstrap: int = 1000,
                seed: int = 0, anchor: str | None = None, l2: float = 1e-3) -> list[dict]:
    """Models ranked by Bradley-Terry rating, best first.

    Each row: ``{"model", "rating", "ci_low", "ci_high", "rank", "wins", "losses", "ties",
    "n"}``; ``n`` counts the model's battles. ``bootstrap=0`` gives no intervals (None).
    An empty list when no battle between two different models exists.
    """
    battles = battles_from_judgments(judgments, items)
    if not battles:
        return []
    names = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    index = {name: i for i, name in enumerate(names)}
    if anchor is not None and anchor not in index:
        raise ValueError(f"anchor model {anchor!r} has no battles; models: {', '.join(names)}")
    anchor_index = index[anchor] if anchor is not None else None
    a = np.array([index[b.model_a] for b in battles])  # (N,)
    b = np.array([index[b.model_b] for b in battles])  # (N,)
    outcome = np.array([b_.outcome for b_ in battles])  # (N,)
    item_ids = {item_id: i for i, item_id in enumerate(sorted({b_.item_id for b_ in battles}))}
    item_of = np.array([item_ids[b_.item_id] for b_ in battles])  # (N,)
    m = len(names)

    def ratings_for(weight: np.ndarray) -> np.ndarray:
        theta = fit_bradley_terry(*_pair_statistics(a, b, outcome, weight, m), m, l2=l2)
        return to_ratings(theta, anchor_index)

    point = ratings_for(np.ones(len(battles)))
    low = high = [None] * m
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = np.empty((bootstrap, m))
        for round_ in range(bootstrap):
            # how often each item is drawn when len(item_ids) items are drawn with replacement
            drawn = np.bincount(rng.integers(0, len(item_ids), len(item_ids)), minlength=len(item_ids))
            samples[round_] = ratings_for(drawn[item_of].astype(float))
        low, high = np.percentile(samples, [2.5, 97.5], axis=0).tolist()

    tally = defaultdict(lambda: [0, 0, 0])  # wins, losses, ties
    for battle in battles:
        if battle.outcome == 0.5:
            tally[battle.model_a][2] += 1
            tally[battle.model_b][2] += 1
        else:
            winner, loser = ((battle.model_a, battle.model_b) if battle.outcome == 1.0
                             else (battle.model_b, battle.model_a))
            tally[winner][0] += 1
            tally[loser][1] += 1
    rows = [{"model": name, "rating": float(point[i]),
             "ci_low": low[i], "ci_high": high[i],
             "wins": tally[name][0], "losses": tally[name][1], "ties": tally[name][2],
             "n": sum(tally[name])} for i, name in enumerate(names)]
    for row in rows:  # without intervals, the plain order of the point ratings
        row["rank"] = 1 + sum((other["ci_low"] > row["ci_high"]) if bootstrap > 0
                              else (other["rating"] > row["rating"]) for other in rows)
    return sorted(rows, key=lambda row: -row["rating"])
