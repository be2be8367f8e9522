"""The AI judge: candidates compared by a model under a written constitution.

    tether judge --items items.jsonl --backend local:tether:default --out judgments.jsonl

Every pair of candidates is judged twice, once in each order (FastChat's g1/g2), because
judges, small ones especially, prefer whichever response they read first:

    order 1: A = x, B = y  ->  winner w1        order 2: A = y, B = x  ->  winner w2
    w1 == w2  ->  that verdict (x, y, or tie)
    w1 != w2  ->  tie, flagged inconsistent (counted in ``JudgeResult.inconsistent``)

A backend that returns scores (the local judge: s = log p(A) - log p(B)) is debiased instead of
voted on: a first-position preference b adds to both orders' scores, s1 = d + b and
s2 = -d + b, so the preference for x free of position is

    d = (s1 - s2) / 2        winner x if d > margin, y if d < -margin, else tie

(``debias_position=True``, the default). Order disagreements are still counted in
``JudgeResult.inconsistent``, but they no longer throw the pair away: a 135M judge agreed with
itself across orders on 6% of pairs, so voting left almost no preference data.

Records (the same ``Judgment`` people produce, ``source="ai"``):

* two candidates: a ``pairwise`` judgment, ``{"winner": ID | "tie"}``; ``shown_left`` is the
  candidate read first in order 1.
* K > 2 candidates: all C(K, 2) pairs are judged (twice each) and the item gets one
  ``ranking`` judgment ranked by Copeland score (wins + ties / 2 over its pairs; equal scores
  share a rank). A ranking is what the labeling app and the exports already read; rankings
  expand back to pairs for the leaderboard and for preference data.

Verdicts keep the shape every tool validates; the inconsistent pairs are named on the first
line of ``reason`` (``inconsistent pairs: [["c0", "c1"]]``, read back by
``agreement.inconsistent_pairs``), then each order's raw output follows, one pair per line.

A pair the backend could not decide (an HTTP reply without a verdict, after retries) makes its
item fail: the item gets no judgment and its id is listed in ``JudgeResult.failed``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from tether.feedback.agreement import inconsistency_note
from tether.feedback.constitution import Constitution
from tether.feedback.judge_backends import BackendVerdict, JudgeBackend, JudgeRequest
from tether.feedback.records import FeedbackItem, Judgment


@dataclass
class JudgeResult:
    judgments: list[Judgment]
    comparisons: int = 0  # candidate pairs judged (each in both orders)
    inconsistent: int = 0  # pairs whose two orders disagreed
    failed: list[str] = field(default_factory=list)  # item ids without a verdict

    @property
    def consistency(self) -> float | None:
        """Fraction of pairs whose two orders agreed."""
        return 1 - self.inconsistent / self.comparisons if self.comparisons else None


def _winner(verdict: BackendVerdict, shown_a: str, shown_b: str) -> str | None:
    """A backend's choice as a candidate id (or "tie"); None when it gave none."""
    return {"A": shown_a, "B": shown_b, "tie": "tie", None: None}[verdict.choice]


def copeland_ranks(candidate_ids: list[str], winners: dict[tuple[str, str], str]) -> dict[str, int]:
    """Ranks (1 = best, ties share a rank, dense) by Copeland score: 1 per pair won, 1/2 per tie.

    ``winners`` maps each pair ``(x, y)`` to x, y or "tie".
    """
    score = {candidate: 0.0 for candidate in candidate_ids}
    for (x, y), winner in winners.items():
        if winner == "tie":
            score[x] += 0.5
            score[y] += 0.5
        else:
            score[winner] += 1.0
    levels = sorted(set(score.values()), reverse=True)
    return {candidate: levels.index(score[candidate]) + 1 for candidate in candidate_ids}


def _debiased_winner(first: BackendVerdict, second: BackendVerdict, x: str, y: str,
                     margin: float) -> str:
    """x, y or "tie" from the two orders' scores, the first-position bias cancelled."""
    preference = (first.score - second.score) / 2  # > 0: x is better
    return x if preference > margin else y if preference < -margin else "tie"


def judge_items(items: list[FeedbackItem], backend: JudgeBackend, constitution: Constitution, *,
                annotator: str = "ai-judge", progress: bool = True,
                debias_position: bool = True) -> JudgeResult:
    """Judge every item's candidates pairwise in both orders; see the module docstring."""
    requests: list[JudgeRequest] = []
    slots: list[tuple[int, str, str]] = []  # (item index, candidate x, candidate y) per pair
    for index, item in enumerate(items):
        texts = {candidate.id: candidate.text for candidate in item.candidates}
        for x, y in combinations([candidate.id for candidate in item.candidates], 2):
            requests.append(JudgeRequest(item.prompt, texts[x], texts[y], item.metadata))  # order 1: x first
            requests.append(JudgeRequest(item.prompt, texts[y], texts[x], item.metadata))  # order 2: y first
            slots.append((index, x, y))
    verdicts = backend.judge(requests, constitution, progress=progress)

    winners: dict[int, dict[tuple[str, str], str]] = defaultdict(dict)
    disagreed: dict[int, list[tuple[str, str]]] = defaultdict(list)  # pairs made ties by it
    order_flips: dict[int, int] = defaultdict(int)  # disagreements resolved by debiased scores
    notes: dict[int, list[str]] = defaultdict(list)
    failed: set[int] = set()
    for number, (index, x, y) in enumerate(slots):
        first, second = verdicts[2 * number], verdicts[2 * number + 1]
        w1, w2 = _winner(first, x, y), _winner(second, y, x)
        notes[index].append(f"{x} vs {y}: {w1} ({first.raw.strip()[-200:]}); "
                            f"{y} vs {x}: {w2} ({second.raw.strip()[-200:]})")
        scored = first.score is not None and second.score is not None
        if w1 is None or w2 is None:
            failed.add(index)
        elif debias_position and scored:
            winners[index][(x, y)] = _debiased_winner(first, second, x, y,
                                                      getattr(backend, "tie_margin", 0.0))
            order_flips[index] += w1 != w2
        elif w1 == w2:
            winners[index][(x, y)] = w1
        else:
            winners[index][(x, y)] = "tie"
            disagreed[index].append((x, y))

    judgments = []
    for index, item in enumerate(items):
        if index in failed:
            continue
        ids = [candidate.id for candidate in item.candidates]
        if len(ids) == 2:
            verdict = {"winner": winners[index][(ids[0], ids[1])]}
            task, shown_left = "pairwise", ids[0]
        else:
            verdict = {"ranks": copeland_ranks(ids, winners[index])}
            task, shown_left = "ranking", None
        lines = ([inconsistency_note(disagreed[index])] if disagreed[index] else []) + notes[index]
        judgments.append(Judgment(item_id=item.id, task=task, verdict=verdict, annotator=annotator,
                                  source="ai", reason="\n".join(lines),
                                  shown_left=shown_left, constitution_version=constitution.label))
    return JudgeResult(
        judgments=judgments,
        comparisons=sum(index not in failed for index, _, _ in slots),
        inconsistent=sum(len(pairs) for index, pairs in disagreed.items() if index not in failed)
        + sum(flips for index, flips in order_flips.items() if index not in failed),
        failed=[items[index].id for index in sorted(failed)])
