"""Judgments to preference pairs (prompt, chosen, rejected), the data DPO and reward models read.

A pairwise verdict with a winner gives one pair. A ranking gives its C(K, 2) pairs with
different ranks (``tether.data.expand_ranking``). Ties, both-bad verdicts, not-rankable
rankings and inconsistent AI verdicts (the two orders disagreed:
``agreement.inconsistent_pairs``) say nothing about which response is better, so they give no
pair. Each judgment gives its own pairs: an item judged by three people yields up to three copies
of its pair, which weights it by how many agreed.
"""

from __future__ import annotations

from tether.data.records import PreferenceRecord, RankingRecord, expand_ranking
from tether.feedback.agreement import inconsistent_pairs
from tether.feedback.records import PAIRWISE_SPECIAL, FeedbackItem, Judgment


def judgments_to_pairs(items: list[FeedbackItem], judgments: list[Judgment]) -> list[PreferenceRecord]:
    """Preference pairs from judgments, in judgment order; ids read ``ITEM/ANNOTATOR[/i-j]``.

    Judgments of unknown items, and rating judgments, give none.
    """
    by_id = {item.id: item for item in items}
    pairs: list[PreferenceRecord] = []
    for judgment in judgments:
        item = by_id.get(judgment.item_id)
        skipped = inconsistent_pairs(judgment)
        if item is None or (judgment.task == "pairwise" and skipped):
            continue
        texts = {candidate.id: candidate.text for candidate in item.candidates}
        group = f"{item.id}/{judgment.annotator}"
        if judgment.task == "pairwise":
            winner = judgment.verdict.get("winner")
            if winner in PAIRWISE_SPECIAL or winner not in texts or len(texts) != 2:
                continue
            loser = next(candidate for candidate in texts if candidate != winner)
            pairs.append(PreferenceRecord(prompt=item.prompt, chosen=texts[winner],
                                          rejected=texts[loser], id=group))
        elif judgment.task == "ranking" and "ranks" in judgment.verdict:
            ranks = judgment.verdict["ranks"]
            order = [candidate for candidate in texts if candidate in ranks]
            ranking = RankingRecord(prompt=item.prompt, responses=[texts[c] for c in order],
                                    ranks=[ranks[c] for c in order], id=group)
            for pair in expand_ranking(ranking):
                i, j = (int(n) for n in pair.id.rsplit("/", 1)[1].split("-"))
                if tuple(sorted((order[i], order[j]))) not in skipped:
                    pairs.append(pair)
    return pairs


def preference_rows(pairs: list[PreferenceRecord]) -> list[dict]:
    """JSONL rows ``{"id", "prompt", "chosen", "rejected"}`` as ``tether train dpo`` reads them."""
    return [{"id": pair.id, "prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
            for pair in pairs]
