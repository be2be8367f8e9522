"""Turn judgments into training data: preference pairs (TRL format) and per-item ranking pairs.

Several judgments of one item are aggregated per candidate pair by majority: every judgment casts
one vote per pair (``verdicts.pair_votes``: the better candidate, ``tie`` or ``both_bad``), and a
pair is kept only when one candidate has strictly more votes than every other option. A pair whose
top vote is ``tie`` or ``both_bad``, or whose top is shared (1 A, 1 B), says nothing usable and is
skipped; ``not_rankable`` rankings cast no votes at all.

- ``all_pairs=False`` (``--format preference``): one pair per item. For two candidates that is the
  majority pair; for K > 2 it is best vs worst by Copeland score (majority wins minus losses),
  kept only when best and worst are unique and best beats worst by majority (distilabel style:
  one pair per prompt, so DPO does not overweight prompts with many candidates).
- ``all_pairs=True`` (``--format ranking``): every majority pair, each line carrying the item id as
  ``group_id`` (InstructGPT trains the C(K,2) pairs of one prompt together).

Rows: ``{"prompt", "chosen", "rejected", "id"}`` (+ ``"group_id"``) with plain strings, or with
``chat=True`` TRL's conversational shape: ``prompt`` a list of messages, ``chosen`` /
``rejected`` one assistant message each.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import combinations
from typing import Any

from tether.errors import TetherError
from tether.feedback.records import FeedbackItem, Judgment
from tether.feedback.verdicts import pair_votes, verdict_problem

EXPORT_FORMATS = ("preference", "preference-chat", "ranking", "raw")


def majority_pairs(item: FeedbackItem, judgments: Iterable[Judgment]
                   ) -> dict[tuple[str, str], str]:
    """``{(a, b): winner}`` for every candidate pair (sorted ids) with a strict-majority winner."""
    ids = [c.id for c in item.candidates]
    ballots: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for judgment in judgments:
        problem = verdict_problem(judgment.task, judgment.verdict, ids)
        if problem is not None:
            raise TetherError(f"judgment by {judgment.annotator!r} on item {item.id!r}: {problem}")
        for pair, vote in pair_votes(judgment.task, judgment.verdict, ids).items():
            ballots[pair][vote] += 1
    winners = {}
    for pair, counts in ballots.items():
        (top, top_count), *rest = counts.most_common()
        if rest and rest[0][1] == top_count:
            continue  # shared top: no majority
        if top in pair:  # not "tie" / "both_bad"
            winners[pair] = top
    return winners


def _best_worst(ids: list[str], winners: dict[tuple[str, str], str]) -> tuple[str, str] | None:
    score = Counter({c: 0 for c in ids})
    for pair, winner in winners.items():
        loser = pair[1] if winner == pair[0] else pair[0]
        score[winner] += 1
        score[loser] -= 1
    ranked = score.most_common()
    best, worst = ranked[0], ranked[-1]
    if ranked[1][1] == best[1] or ranked[-2][1] == worst[1]:
        return None  # shared best or shared worst
    pair = tuple(sorted((best[0], worst[0])))
    if winners.get(pair) != best[0]:
        return None  # best does not beat worst head to head
    return best[0], worst[0]


def _messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _row(item: FeedbackItem, chosen: str, rejected: str, chat: bool, row_id: str,
         group_id: str | None) -> dict[str, Any]:
    text = {c.id: c.text for c in item.candidates}
    if chat:
        row = {"prompt": _messages(item.prompt),
               "chosen": [{"role": "assistant", "content": text[chosen]}],
               "rejected": [{"role": "assistant", "content": text[rejected]}]}
    else:
        if not isinstance(item.prompt, str):
            raise TetherError(f"item {item.id!r} has a chat prompt (a list of messages); export "
                              f"chat data instead (chat=True, --format preference-chat)")
        row = {"prompt": item.prompt, "chosen": text[chosen], "rejected": text[rejected]}
    row["id"] = row_id
    if group_id is not None:
        row["group_id"] = group_id
    return row


def preference_pairs(items: Iterable[FeedbackItem], judgments: Iterable[Judgment], *,
                     chat: bool = False, all_pairs: bool = False, include_gold: bool = True,
                     include_ai: bool = True) -> list[dict[str, Any]]:
    """Preference rows for DPO / reward models from the majority of each item's judgments.

    ``include_gold=False`` drops gold items; ``include_ai=False`` drops ``source="ai"``
    judgments before voting. Judgments of items not in ``items`` are ignored; items without a
    usable majority give no row. Rows follow the order of ``items``.
    """
    by_item: dict[str, list[Judgment]] = defaultdict(list)
    for judgment in judgments:
        if include_ai or judgment.source != "ai":
            by_item[judgment.item_id].append(judgment)
    rows: list[dict[str, Any]] = []
    for item in items:
        if (item.gold is not None and not include_gold) or not by_item.get(item.id):
            continue
        ids = [c.id for c in item.candidates]
        winners = majority_pairs(item, by_item[item.id])
        if all_pairs:
            index = {c: i for i, c in enumerate(ids)}
            for a, b in combinations(ids, 2):
                winner = winners.get(tuple(sorted((a, b))))
                if winner is not None:
                    loser = b if winner == a else a
                    rows.append(_row(item, winner, loser, chat,
                                     f"{item.id}/{index[a]}-{index[b]}", item.id))
        else:
            best_worst = _best_worst(ids, winners)
            if best_worst is not None:
                rows.append(_row(item, *best_worst, chat, item.id, None))
    return rows


def ranking_pairs(items: Iterable[FeedbackItem], judgments: Iterable[Judgment], *,
                  chat: bool = False, include_gold: bool = True, include_ai: bool = True
                  ) -> list[dict[str, Any]]:
    """Every majority pair of every item, one row each, with ``group_id`` = the item id."""
    return preference_pairs(items, judgments, chat=chat, all_pairs=True,
                            include_gold=include_gold, include_ai=include_ai)


def raw_judgments(judgments: Iterable[Judgment]) -> list[dict[str, Any]]:
    """Unaggregated per-annotator judgments as JSON-ready dicts (``Judgment`` fields)."""
    return [judgment.model_dump(mode="json") for judgment in judgments]
