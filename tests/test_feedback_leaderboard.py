"""Bradley-Terry ratings: exact MLE on tiny data, battles from records, recovery of known strengths."""

import math

import numpy as np
import pytest

from tether.feedback.agreement import inconsistency_note
from tether.feedback.leaderboard import battles_from_judgments, fit_bradley_terry, leaderboard
from tether.feedback.records import Candidate, FeedbackItem, Judgment


def duel(item_id, model_a, model_b):
    return FeedbackItem(id=item_id, prompt="p", candidates=[
        Candidate(id="c0", text="a", model=model_a), Candidate(id="c1", text="b", model=model_b)])


def vote(item_id, winner, annotator="h", source="human", reason=None):
    return Judgment(item_id=item_id, task="pairwise", verdict={"winner": winner}, annotator=annotator,
                    source=source, reason=reason)


def test_two_models_rating_gap_is_the_log_odds():
    # 3 wins, 1 loss: the MLE has P(a beats b) = 3/4, a gap of 400 log10(3) = 190.85 points.
    theta = fit_bradley_terry(np.array([0]), np.array([1]), np.array([3.0]), np.array([4.0]), 2, l2=0)
    assert 400 / math.log(10) * (theta[0] - theta[1]) == pytest.approx(400 * math.log10(3), abs=1e-6)
    items = [duel(f"i{n}", "a", "b") for n in range(4)]
    rows = leaderboard([vote("i0", "c0"), vote("i1", "c0"), vote("i2", "c0"), vote("i3", "c1")],
                       items, bootstrap=0, l2=0)
    assert [row["model"] for row in rows] == ["a", "b"]
    assert rows[0]["rating"] == pytest.approx(1000 + 200 * math.log10(3), abs=1e-6)  # mean at 1000
    assert rows[0] | {"rating": 0} == {"model": "a", "rating": 0, "ci_low": None, "ci_high": None,
                                       "rank": 1, "wins": 3, "losses": 1, "ties": 0, "n": 4}


def test_a_tie_counts_half_a_win_each_way():
    # 1 win + 1 tie = a score of 1.5 in 2 battles: P = 3/4 again.
    items = [duel("i0", "a", "b"), duel("i1", "a", "b")]
    rows = leaderboard([vote("i0", "c0"), vote("i1", "tie")], items, bootstrap=0, l2=0)
    assert rows[0]["rating"] - rows[1]["rating"] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert (rows[0]["ties"], rows[1]["ties"]) == (1, 1)


def test_an_undefeated_model_stays_finite_and_the_anchor_sits_at_1000():
    items = [duel(f"i{n}", "a", "b") for n in range(3)]
    rows = leaderboard([vote(f"i{n}", "c0") for n in range(3)], items, bootstrap=0, anchor="b")
    ratings = {row["model"]: row["rating"] for row in rows}
    assert ratings["b"] == 1000.0
    assert 1500 < ratings["a"] < 5000


def test_battles_come_from_pairwise_votes_and_expanded_rankings():
    items = [duel("p", "a", "b"), duel("same", "a", "a"), duel("odd", "a", "b"),
             FeedbackItem(id="r", prompt="p", candidates=[
                 Candidate(id="x", text="1", model="a"), Candidate(id="y", text="2", model="b"),
                 Candidate(id="z", text="3", model="c")])]
    judgments = [vote("p", "c1"), vote("same", "c0"),
                 vote("odd", "tie", source="ai", reason=inconsistency_note([("c0", "c1")])),
                 Judgment(item_id="r", task="ranking", annotator="ai", source="ai",
                          reason=inconsistency_note([("z", "y")]),
                          verdict={"ranks": {"x": 2, "y": 1, "z": 2}}),
                 Judgment(item_id="r", task="ranking", annotator="k", verdict={"not_rankable": True}),
                 vote("unknown", "c0")]
    battles = [(b.item_id, b.model_a, b.model_b, b.outcome) for b in battles_from_judgments(judgments, items)]
    assert battles == [("p", "a", "b", 0.0), ("r", "a", "b", 0.0), ("r", "a", "c", 0.5)]


def test_known_strengths_are_recovered_with_covering_intervals():
    true = {"m0": 850.0, "m1": 950.0, "m2": 1050.0, "m3": 1150.0}  # mean 1000, as fitted
    names = list(true)
    rng = np.random.default_rng(0)
    items, judgments = [], []
    for n in range(300):
        a, b = rng.choice(4, size=2, replace=False)
        items.append(duel(f"i{n}", names[a], names[b]))
        p_first = 1 / (1 + 10 ** ((true[names[b]] - true[names[a]]) / 400))
        for annotator in ("h1", "h2"):  # two correlated votes per item: resample items, not votes
            judgments.append(vote(f"i{n}", "c0" if rng.random() < p_first else "c1", annotator))
    rows = leaderboard(judgments, items, bootstrap=400, seed=0)
    assert [row["model"] for row in rows] == ["m3", "m2", "m1", "m0"]
    for row in rows:
        assert row["ci_low"] < true[row["model"]] < row["ci_high"], row
        assert row["ci_low"] < row["rating"] < row["ci_high"]
        assert 40 < row["ci_high"] - row["ci_low"] < 120
    assert [row["rank"] for row in rows] == [1, 2, 3, 4]  # gaps of 100 points: intervals apart
    assert leaderboard(judgments, items, bootstrap=50, seed=1) == leaderboard(judgments, items, bootstrap=50, seed=1)


def test_no_battles_gives_an_empty_table():
    assert leaderboard([vote("s", "c0")], [duel("s", "a", "a")]) == []
