"""Check a verdict against its task and item, and read the pairwise votes a verdict casts.

The verdict shapes are documented in ``records.py``. ``pair_votes`` turns any verdict into one
vote per unordered pair of candidates, so pairwise choices, rankings and ratings aggregate the
same way (``export.py``):

    pairwise  {"winner": A}           ->  {(A, B): A}
              {"winner": "tie"}       ->  {(A, B): "tie"}     ("both_bad" likewise)
    ranking   {"ranks": {A:1,B:2,C:2}} ->  {(A,B): A, (A,C): A, (B,C): "tie"}
              {"not_rankable": true}   ->  {}                 (no opinion on any pair)
    rating    {"ratings": {A:5, B:3}}  ->  {(A, B): A}         (equal scores: "tie")

Pair keys are sorted candidate-id tuples.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from tether.feedback.records import PAIRWISE_SPECIAL


def verdict_problem(task: str, verdict: Any, candidate_ids: list[str], *,
                    rating_scale: int | None = None) -> str | None:
    """What is wrong with ``verdict`` for an item with these candidates, or None if it is valid.

    Ranks run 1..K (equal ranks are ties); ratings 1..``rating_scale`` (any number when None).
    """
    if not isinstance(verdict, dict):
        return f"verdict must be an object, got {type(verdict).__name__}"
    ids = set(candidate_ids)
    if task == "pairwise":
        if len(candidate_ids) != 2:
            return f"a pairwise item needs exactly 2 candidates, this one has {len(candidate_ids)}"
        if set(verdict) != {"winner"}:
            return 'pairwise verdict must be {"winner": CANDIDATE_ID | "tie" | "both_bad"}'
        winner = verdict["winner"]
        if winner not in ids and winner not in PAIRWISE_SPECIAL:
            return f"winner {winner!r} is not a candidate of this item, 'tie' or 'both_bad'"
        return None
    if task == "ranking":
        if verdict == {"not_rankable": True}:
            return None
        if set(verdict) != {"ranks"} or not isinstance(verdict["ranks"], dict):
            return 'ranking verdict must be {"ranks": {CANDIDATE_ID: rank}} or {"not_rankable": true}'
        return _per_candidate(verdict["ranks"], ids, "rank", 1, len(candidate_ids))
    if task == "rating":
        if set(verdict) != {"ratings"} or not isinstance(verdict["ratings"], dict):
            return 'rating verdict must be {"ratings": {CANDIDATE_ID: score}}'
        return _per_candidate(verdict["ratings"], ids, "rating", 1, rating_scale)
    return f"unknown task {task!r}; expected pairwise, ranking or rating"


def _per_candidate(values: dict, ids: set[str], what: str, low: int, high: int | None
                   ) -> str | None:
    if set(values) != ids:
        missing, extra = sorted(ids - set(values)), sorted(set(values) - ids)
        return f"needs a {what} for every candidate (missing {missing}, unknown {extra})"
    for candidate, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{what} of {candidate!r} must be an integer, got {value!r}"
        if value < low or (high is not None and value > high):
            top = high if high is not None else "..."
            return f"{what} of {candidate!r} must be in {low}..{top}, got {value}"
    return None


def pair_votes(task: str, verdict: dict[str, Any], candidate_ids: list[str]
               ) -> dict[tuple[str, str], str]:
    """One vote per candidate pair: the better candidate's id, ``"tie"`` or ``"both_bad"``."""
    if task == "pairwise":
        pair = tuple(sorted(candidate_ids))
        return {pair: verdict["winner"]}
    if verdict.get("not_rankable"):
        return {}
    if task == "ranking":
        # rank 1 is best: the lower rank wins
        score = {c: -r for c, r in verdict["ranks"].items()}
    else:
        score = dict(verdict["ratings"])
    votes: dict[tuple[str, str], str] = {}
    for a, b in combinations(sorted(candidate_ids), 2):
        if a not in score or b not in score:
            continue
        votes[(a, b)] = "tie" if score[a] == score[b] else (a if score[a] > score[b] else b)
    return votes
