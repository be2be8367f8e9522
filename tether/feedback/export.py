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

Every export also says which items it left out and why (``Export.dropped``, ``Export.summary()``):
not judged yet, gold or AI-only when those are excluded, every judgment "cannot rank", the
majority said tie or both bad, votes split with no majority, or (one pair per item) no single
best and worst response.

Rows: ``{"prompt", "chosen", "rejected", "id"}`` (+ ``"group_id"``) with plain strings, or with
``chat=True`` TRL's conversational shape: ``prompt`` a list of messages, ``chosen`` /
``rejected`` one assistant message each.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from tether.errors import TetherError
from tether.feedback.records import FeedbackItem, Judgment
from tether.feedback.verdicts import pair_votes, verdict_problem

EXPORT_FORMATS = ("preference", "preference-chat", "ranking", "raw")

# Why an item (raw: a judgment) is not in an export
NOT_JUDGED = "not judged yet"
GOLD_EXCLUDED = "gold item (gold excluded)"
AI_ONLY = "only AI judgments (AI excluded)"
AI_JUDGMENT = "AI judgment (AI excluded)"
NOT_RANKABLE = "every judgment said 'cannot rank'"
MAJORITY_TIE = "the majority said tie or both bad"
SPLIT = "votes split with no majority"
NO_BEST_WORST = "no single best and worst response"


@dataclass
class Export:
    """An export's rows, and what it left out: ``{reason: [item ids]}`` (raw exports count
    judgments, one item id per dropped judgment)."""

    format: str
    rows: list[dict[str, Any]]
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def summary(self, examples: int = 3) -> str:
        """One line, e.g. ``2 preference rows; 3 items left out: 2 the majority said tie or
        both bad (i1, i4), 1 not judged yet (i9)``."""
        unit = "judgments" if self.format == "raw" else "items"
        text = f"{len(self.rows)} {self.format} rows"
        total = sum(len(ids) for ids in self.dropped.values())
        if not total:
            return text + f"; no {unit} left out"
        parts = []
        for reason, ids in sorted(self.dropped.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(ids[:examples]) + (", ..." if len(ids) > examples else "")
            parts.append(f"{len(ids)} {reason} ({shown})")
        return text + f"; {total} {unit} left out: " + ", ".join(parts)


def pair_outcomes(item: FeedbackItem, judgments: Iterable[Judgment]
                  ) -> dict[tuple[str, str], str | None]:
    """``{(a, b): outcome}`` for every candidate pair (sorted ids) that got a vote: the
    strict-majority vote (a candidate id, ``tie`` or ``both_bad``), or None when the top vote
    is shared."""
    ids = [c.id for c in item.candidates]
    ballots: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for judgment in judgments:
        problem = verdict_problem(judgment.task, judgment.verdict, ids)
        if problem is not None:
            raise TetherError(f"judgment by {judgment.annotator!r} on item {item.id!r}: {problem}")
        for pair, vote in pair_votes(judgment.task, judgment.verdict, ids).items():
            ballots[pair][vote] += 1
    outcomes: dict[tuple[str, str], str | None] = {}
    for pair, counts in ballots.items():
        (top, top_count), *rest = counts.most_common()
        outcomes[pair] = None if rest and rest[0][1] == top_count else top
    return outcomes


def majority_pairs(item: FeedbackItem, judgments: Iterable[Judgment]
                   ) -> dict[tuple[str, str], str]:
    """``{(a, b): winner}`` for every candidate pair (sorted ids) with a strict-majority winner."""
    return {pair: outcome for pair, outcome in pair_outcomes(item, judgments).items()
            if outcome in pair}  # not None (shared top), "tie" or "both_bad"


def _no_winner_reason(outcomes: dict[tuple[str, str], str | None]) -> str:
    """Why pairs without a majority winner gave no row."""
    if not outcomes:
        return NOT_RANKABLE  # judgments that cast no votes
    if all(outcome is not None for outcome in outcomes.values()):
        return MAJORITY_TIE
    return SPLIT


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
    return _pairs_export(items, judgments, chat=chat, all_pairs=all_pairs,
                         include_gold=include_gold, include_ai=include_ai).rows


def _pairs_export(items: Iterable[FeedbackItem], judgments: Iterable[Judgment], *, chat: bool,
                  all_pairs: bool, include_gold: bool, include_ai: bool) -> Export:
    fmt = "ranking" if all_pairs else "preference-chat" if chat else "preference"
    by_item: dict[str, list[Judgment]] = defaultdict(list)
    ai_only: set[str] = set()
    for judgment in judgments:
        if include_ai or judgment.source != "ai":
            by_item[judgment.item_id].append(judgment)
        else:
            ai_only.add(judgment.item_id)
    result = Export(fmt, [])
    for item in items:
        reason = None
        if item.gold is not None and not include_gold:
            reason = GOLD_EXCLUDED
        elif not by_item.get(item.id):
            reason = AI_ONLY if item.id in ai_only else NOT_JUDGED
        else:
            reason = _add_item_rows(result.rows, item, by_item[item.id], chat, all_pairs)
        if reason is not None:
            result.dropped.setdefault(reason, []).append(item.id)
    return result


def _add_item_rows(rows: list[dict[str, Any]], item: FeedbackItem, judgments: list[Judgment],
                   chat: bool, all_pairs: bool) -> str | None:
    """Append the item's rows; the reason it gave none, else None."""
    ids = [c.id for c in item.candidates]
    outcomes = pair_outcomes(item, judgments)
    winners = {pair: outcome for pair, outcome in outcomes.items() if outcome in pair}
    if not winners:
        return _no_winner_reason(outcomes)
    if all_pairs:
        index = {c: i for i, c in enumerate(ids)}
        for a, b in combinations(ids, 2):
            winner = winners.get(tuple(sorted((a, b))))
            if winner is not None:
                loser = b if winner == a else a
                rows.append(_row(item, winner, loser, chat,
                                 f"{item.id}/{index[a]}-{index[b]}", item.id))
        return None
    best_worst = _best_worst(ids, winners)
    if best_worst is None:
        return NO_BEST_WORST
    rows.append(_row(item, *best_worst, chat, item.id, None))
    return None


def ranking_pairs(items: Iterable[FeedbackItem], judgments: Iterable[Judgment], *,
                  chat: bool = False, include_gold: bool = True, include_ai: bool = True
                  ) -> list[dict[str, Any]]:
    """Every majority pair of every item, one row each, with ``group_id`` = the item id."""
    return preference_pairs(items, judgments, chat=chat, all_pairs=True,
                            include_gold=include_gold, include_ai=include_ai)


def raw_judgments(judgments: Iterable[Judgment]) -> list[dict[str, Any]]:
    """Unaggregated per-annotator judgments as JSON-ready dicts (``Judgment`` fields)."""
    return [judgment.model_dump(mode="json") for judgment in judgments]


def export(items: Iterable[FeedbackItem], judgments: Iterable[Judgment], fmt: str, *,
           include_ai: bool = True, include_gold: bool = True) -> Export:
    """The rows of one of ``EXPORT_FORMATS``, with what was left out and why."""
    if fmt not in EXPORT_FORMATS:
        raise TetherError(f"unknown export format {fmt!r}; expected one of "
                          f"{', '.join(EXPORT_FORMATS)}")
    if fmt == "raw":
        judgments = list(judgments)
        kept = [j for j in judgments if include_ai or j.source != "ai"]
        dropped = [j.item_id for j in judgments if not include_ai and j.source == "ai"]
        return Export(fmt, raw_judgments(kept), {AI_JUDGMENT: dropped} if dropped else {})
    return _pairs_export(items, judgments, chat=fmt == "preference-chat",
                         all_pairs=fmt == "ranking", include_gold=include_gold,
                         include_ai=include_ai)
