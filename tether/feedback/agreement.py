"""How much annotators agree, and how each one behaves: the numbers a labeling project is run by.

Reliability data is a mapping ``unit -> {annotator: value}``; a unit is what several people
judged. Units are keyed on the item id (a pairwise verdict) or on ``(item id, candidate id)``
(a rank or a rating of one candidate), never on the text, so two items with the same prompt stay
two units. Annotators who skipped a unit are simply absent from it (missing data).

Krippendorff's alpha (Krippendorff, *Content Analysis*, 2004; "Computing Krippendorff's
alpha-reliability", 2011), by the coincidence matrix. A unit u with m_u >= 2 values adds, for
every ordered pair of values (c, k) from different annotators, 1 / (m_u - 1) to ``o[c, k]``;
units with one value are not pairable and drop out. With n_c = sum_k o[c, k] and n = sum_c n_c:

    D_o = sum_{c,k} o[c, k] delta2(c, k) / n                     observed disagreement
    D_e = sum_{c,k} n_c n_k delta2(c, k) / (n (n - 1))           expected by chance
    alpha = 1 - D_o / D_e                                         (undefined when D_e = 0)

    nominal:  delta2(c, k) = [c != k]
    ordinal:  delta2(c, k) = (sum_{g from c to k} n_g - (n_c + n_k) / 2)^2   (values sorted)
    interval: delta2(c, k) = (c - k)^2

Cohen's kappa for two annotators on the units both judged (nominal labels):

    kappa = (p_o - p_e) / (1 - p_e),   p_e = sum_label p_a(label) p_b(label)

Pairwise verdicts become values this way: nominal, the winner's candidate id or "tie" /
"both_bad"; ordinal, a 3-point scale from the item's first candidate's side: +1 first wins,
0 tie or both bad, -1 second wins. Ranks and ratings are values of ``(item, candidate)`` units.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping
from itertools import combinations
from typing import Literal

from tether.feedback.records import PAIRWISE_SPECIAL, FeedbackItem, Judgment

Level = Literal["nominal", "ordinal", "interval"]
ReliabilityData = Mapping[Hashable, Mapping[str, Hashable]]  # unit -> {annotator: value}


# ---- Krippendorff's alpha ------------------------------------------------------------------

def coincidences(data: ReliabilityData) -> dict[tuple[Hashable, Hashable], float]:
    """The coincidence matrix ``o[(c, k)]`` of pairable values (see the module docstring)."""
    matrix: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in data.values():
        coded = list(values.values())
        if len(coded) < 2:
            continue
        weight = 1.0 / (len(coded) - 1)
        for i, c in enumerate(coded):
            for j, k in enumerate(coded):
                if i != j:
                    matrix[(c, k)] += weight
    return dict(matrix)


def _distance(level: Level, totals: dict[Hashable, float]):
    """delta2(c, k) for the level of measurement; ordinal needs the marginal totals n_g."""
    if level == "nominal":
        return lambda c, k: float(c != k)
    if level == "interval":
        return lambda c, k: (float(c) - float(k)) ** 2
    if level == "ordinal":
        ordered = sorted(totals)
        position = {value: i for i, value in enumerate(ordered)}
        cumulative, running = {}, 0.0
        for value in ordered:
            running += totals[value]
            cumulative[value] = running  # sum of n_g for g <= value

        def ordinal(c, k):
            low, high = (c, k) if position[c] <= position[k] else (k, c)
            between = cumulative[high] - cumulative[low] + totals[low]  # sum_{g=low..high} n_g
            return (between - (totals[c] + totals[k]) / 2) ** 2

        return ordinal
    raise ValueError(f"unknown level of measurement {level!r}; use nominal, ordinal or interval")


def krippendorff_alpha(data: ReliabilityData, level: Level = "nominal") -> float | None:
    """Krippendorff's alpha of ``unit -> {annotator: value}``; None when undefined (fewer than
    two pairable values, or every pairable value the same, so no disagreement is expected)."""
    matrix = coincidences(data)
    totals: dict[Hashable, float] = defaultdict(float)
    for (c, _), weight in matrix.items():
        totals[c] += weight
    n = sum(totals.values())
    if n < 2 or len(totals) < 2:
        return None
    delta2 = _distance(level, totals)
    observed = sum(weight * delta2(c, k) for (c, k), weight in matrix.items()) / n
    expected = sum(totals[c] * totals[k] * delta2(c, k) for c in totals for k in totals) / (n * (n - 1))
    if expected == 0:
        return None
    return 1.0 - observed / expected


# ---- agreement between two annotators, and overall ---------------------------------------

def cohen_kappa(labels_a: list[Hashable], labels_b: list[Hashable]) -> float | None:
    """Cohen's kappa of two aligned label lists; None when undefined (p_e = 1: both annotators
    used one and the same label throughout)."""
    if len(labels_a) != len(labels_b):
        raise ValueError(f"label lists differ in length: {len(labels_a)} vs {len(labels_b)}")
    if not labels_a:
        return None
    n = len(labels_a)
    observed = sum(a == b for a, b in zip(labels_a, labels_b)) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    expected = sum(count_a[label] * count_b[label] for label in count_a) / (n * n)
    if expected == 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def pairwise_kappas(data: ReliabilityData) -> list[dict]:
    """Cohen's kappa for every pair of annotators with at least one unit in common.

    Returns ``[{"a", "b", "shared", "agreement", "kappa"}]`` sorted by annotator names.
    """
    by_annotator: dict[str, dict[Hashable, Hashable]] = defaultdict(dict)
    for unit, values in data.items():
        for annotator, value in values.items():
            by_annotator[annotator][unit] = value
    rows = []
    for a, b in combinations(sorted(by_annotator), 2):
        shared = [unit for unit in by_annotator[a] if unit in by_annotator[b]]
        if not shared:
            continue
        labels_a = [by_annotator[a][unit] for unit in shared]
        labels_b = [by_annotator[b][unit] for unit in shared]
        rows.append({"a": a, "b": b, "shared": len(shared),
                     "agreement": sum(x == y for x, y in zip(labels_a, labels_b)) / len(shared),
                     "kappa": cohen_kappa(labels_a, labels_b)})
    return rows


def raw_agreement(data: ReliabilityData) -> float | None:
    """Fraction of agreeing pairs among all pairs of values given to the same unit:
    sum_u #{i<j: v_i = v_j} / sum_u C(m_u, 2). None when no unit has two values."""
    agreeing = pairs = 0
    for values in data.values():
        for x, y in combinations(list(values.values()), 2):
            pairs += 1
            agreeing += x == y
    return agreeing / pairs if pairs else None


# ---- from judgments to reliability data ---------------------------------------------------

def pairwise_label(judgment: Judgment) -> str | None:
    """The nominal value of a pairwise verdict: the winner's candidate id, "tie" or "both_bad"."""
    winner = judgment.verdict.get("winner")
    return str(winner) if winner is not None else None


def _ordinal_side(label: str, item: FeedbackItem) -> int | None:
    """+1 when the item's first candidate won, -1 the second, 0 tie or both bad."""
    if label in PAIRWISE_SPECIAL:
        return 0
    ids = [candidate.id for candidate in item.candidates]
    if label == ids[0]:
        return 1
    if len(ids) > 1 and label == ids[1]:
        return -1
    return None


def reliability_data(judgments: Iterable[Judgment], items: Mapping[str, FeedbackItem] | None = None,
                     *, level: Level = "nominal", task: str = "pairwise") -> dict:
    """``unit -> {annotator: value}`` from the judgments of one task kind.

    pairwise: unit = item id; ordinal needs ``items`` (to know which candidate is first).
    ranking / rating: unit = (item id, candidate id), value = rank / score; a not-rankable
    ranking gives no values. An annotator's later judgment of a unit replaces an earlier one.
    """
    data: dict = defaultdict(dict)
    for judgment in judgments:
        if judgment.task != task:
            continue
        if task == "pairwise":
            label = pairwise_label(judgment)
            if label is None:
                continue
            if level == "nominal":
                data[judgment.item_id][judgment.annotator] = label
                continue
            item = (items or {}).get(judgment.item_id)
            side = _ordinal_side(label, item) if item is not None else None
            if side is not None:
                data[judgment.item_id][judgment.annotator] = side
        else:
            key = "ranks" if task == "ranking" else "ratings"
            for candidate, value in (judgment.verdict.get(key) or {}).items():
                data[(judgment.item_id, candidate)][judgment.annotator] = value
    return dict(data)


# ---- per-annotator behaviour --------------------------------------------------------------

def _dense(ranks: Mapping[str, float]) -> dict[str, int]:
    """Ranks renumbered 1, 2, 3... keeping ties, so {a: 1, b: 3} equals {a: 1, b: 2}."""
    order = {value: position for position, value in enumerate(sorted(set(ranks.values())), 1)}
    return {candidate: order[value] for candidate, value in ranks.items()}


def matches_gold(judgment: Judgment, gold: Mapping) -> bool:
    """Does a verdict give the gold answer? pairwise: same winner; ranking: same order (ties
    kept, rank numbers compared after renumbering); rating: the same scores."""
    if judgment.task == "pairwise":
        return judgment.verdict.get("winner") == gold.get("winner")
    if judgment.task == "ranking":
        if "ranks" not in gold or "ranks" not in judgment.verdict:
            return bool(gold.get("not_rankable")) and bool(judgment.verdict.get("not_rankable"))
        return _dense(judgment.verdict["ranks"]) == _dense(gold["ranks"])
    return judgment.verdict.get("ratings") == gold.get("ratings")


def gold_accuracy(judgments: Iterable[Judgment], items: Mapping[str, FeedbackItem]) -> dict[str, dict]:
    """Per annotator: ``{"gold_judged", "gold_correct", "gold_accuracy"}`` on items with gold."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for judgment in judgments:
        item = items.get(judgment.item_id)
        if item is None or item.gold is None:
            continue
        counts[judgment.annotator][0] += 1
        counts[judgment.annotator][1] += matches_gold(judgment, item.gold)
    return {annotator: {"gold_judged": judged, "gold_correct": correct,
                        "gold_accuracy": correct / judged}
            for annotator, (judged, correct) in counts.items()}


def left_bias(judgments: Iterable[Judgment]) -> float | None:
    """Fraction of decided pairwise verdicts (not tie, not both bad) that picked the candidate
    shown on the left. 0.5 is unbiased; None without any such verdict."""
    decided = left = 0
    for judgment in judgments:
        winner = judgment.verdict.get("winner")
        if (judgment.task != "pairwise" or judgment.shown_left is None or winner is None
                or winner in PAIRWISE_SPECIAL):
            continue
        decided += 1
        left += winner == judgment.shown_left
    return left / decided if decided else None


def median_seconds(judgments: Iterable[Judgment]) -> float | None:
    """Median time per judgment over those that recorded one."""
    times = [j.seconds for j in judgments if j.seconds is not None]
    return statistics.median(times) if times else None


# ---- the report the labeling app shows ------------------------------------------------------

def quality_report(judgments: list[Judgment], items: list[FeedbackItem]) -> dict:
    """Agreement and annotator statistics for one project's judgments.

    Returns::

        {"judgments": int, "items_judged": int, "annotators": int,
         "left_bias": float | None, "median_seconds": float | None,
         "tasks": {TASK: {"units": int,            # units with >= 2 values
                          "alpha_nominal": float | None, "alpha_ordinal": float | None,
                          "raw_agreement": float | None,
                          "kappa": [{"a", "b", "shared", "agreement", "kappa"}]}},
         "per_annotator": [{"annotator", "judgments", "left_bias", "median_seconds",
                            "gold_judged", "gold_correct", "gold_accuracy"}]}

    ``tasks`` has one entry per task kind present (pairwise, ranking, rating). Every number
    that cannot be computed (no overlap, no gold, no timing) is None, never a made-up 0.
    """
    by_id = {item.id: item for item in items}
    tasks = {}
    for task in sorted({j.task for j in judgments}):
        nominal = reliability_data(judgments, by_id, level="nominal", task=task)
        ordinal = reliability_data(judgments, by_id, level="ordinal", task=task)
        tasks[task] = {
            "units": sum(len(values) >= 2 for values in nominal.values()),
            "alpha_nominal": krippendorff_alpha(nominal, "nominal"),
            "alpha_ordinal": krippendorff_alpha(ordinal, "ordinal"),
            "raw_agreement": raw_agreement(nominal),
            "kappa": pairwise_kappas(nominal),
        }
    gold = gold_accuracy(judgments, by_id)
    grouped: dict[str, list[Judgment]] = defaultdict(list)
    for judgment in judgments:
        grouped[judgment.annotator].append(judgment)
    per_annotator = [{"annotator": annotator, "judgments": len(own),
                      "left_bias": left_bias(own), "median_seconds": median_seconds(own),
                      **gold.get(annotator, {"gold_judged": 0, "gold_correct": 0,
                                             "gold_accuracy": None})}
                     for annotator, own in sorted(grouped.items())]
    return {"judgments": len(judgments), "items_judged": len({j.item_id for j in judgments}),
            "annotators": len(grouped), "left_bias": left_bias(judgments),
            "median_seconds": median_seconds(judgments), "tasks": tasks,
            "per_annotator": per_annotator}


# ---- AI verdicts whose two orders disagreed ---------------------------------------------------
# The verdict itself stays in the shape every tool validates (records.py): such a pair is a tie.
# Which pairs were inconsistent goes on the first line of ``reason``, as JSON, so tools that
# must not count them (leaderboard, preference pairs) can tell them from real ties.

INCONSISTENT_PREFIX = "inconsistent pairs: "


def inconsistency_note(pairs: list[tuple[str, str]]) -> str:
    """The ``reason`` line that records an AI judge's inconsistent pairs."""
    return INCONSISTENT_PREFIX + json.dumps([sorted(pair) for pair in pairs])


def inconsistent_pairs(judgment: Judgment) -> set[tuple[str, str]]:
    """Candidate pairs (sorted ids) whose two orders disagreed, as the AI judge recorded them."""
    reason = judgment.reason or ""
    if judgment.source != "ai" or not reason.startswith(INCONSISTENT_PREFIX):
        return set()
    return {tuple(sorted(pair)) for pair in json.loads(reason.split("\n", 1)[0][len(INCONSISTENT_PREFIX):])}


# ---- an AI judge against people ---------------------------------------------------------------

def comparison_labels(judgment: Judgment) -> dict[Hashable, str]:
    """``unit -> label`` for agreement between judges with different options: a pairwise
    verdict is one unit (the item) labelled by its winner, with "both_bad" read as "tie" (an AI
    judge has no both-bad answer); a ranking gives one unit per candidate pair ``(item, a, b)``,
    labelled by the better-ranked one or "tie". Ratings give none."""
    if judgment.task == "pairwise":
        winner = judgment.verdict.get("winner")
        if winner is None:
            return {}
        return {judgment.item_id: "tie" if winner in PAIRWISE_SPECIAL else str(winner)}
    if judgment.task == "ranking" and "ranks" in judgment.verdict:
        ranks = judgment.verdict["ranks"]
        return {(judgment.item_id, a, b): (a if ranks[a] < ranks[b] else b if ranks[b] < ranks[a]
                                           else "tie")
                for a, b in combinations(sorted(ranks), 2)}
    return {}


def ai_human_agreement(ai: list[Judgment], human: list[Judgment]) -> dict:
    """How often an AI judge gives the verdict people gave, on the units both judged.

    Every human verdict is paired with the AI's verdict on the same unit (an item judged by
    three people gives three pairs). Returns ``{"shared_items", "comparisons", "agreement",
    "kappa", "confusion": {ai_label: {human_label: count}}, "ai_inconsistent"}``, where
    ``ai_inconsistent`` counts shared AI units whose two orders disagreed (they enter as
    ties; see ``inconsistent_pairs``). Labels are candidate ids or "tie", so the confusion table reads across items when
    candidate ids are positional (``c0``, ``c1``, as ``tether generate`` writes them).
    """
    ai_labels: dict[Hashable, str] = {}
    inconsistent_units: set[Hashable] = set()
    for judgment in ai:
        labels = comparison_labels(judgment)
        ai_labels.update(labels)
        for pair in inconsistent_pairs(judgment):
            # a pairwise verdict's unit is its item; a ranking's, the pair within it
            inconsistent_units.add(judgment.item_id if judgment.task == "pairwise"
                                   else (judgment.item_id, *pair))
    pairs: list[tuple[str, str]] = []
    shared_items: set[str] = set()
    shared_units: set[Hashable] = set()
    for judgment in human:
        for unit, label in comparison_labels(judgment).items():
            if unit in ai_labels:
                pairs.append((ai_labels[unit], label))
                shared_items.add(judgment.item_id)
                shared_units.add(unit)
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ai_label, human_label in pairs:
        confusion[ai_label][human_label] += 1
    return {
        "shared_items": len(shared_items),
        "comparisons": len(pairs),
        "agreement": sum(a == h for a, h in pairs) / len(pairs) if pairs else None,
        "kappa": cohen_kappa([a for a, _ in pairs], [h for _, h in pairs]) if pairs else None,
        "confusion": {a: dict(row) for a, row in sorted(confusion.items())},
        "ai_inconsistent": len(shared_units & inconsistent_units),
    }
