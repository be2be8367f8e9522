"""What the quality page says about ``agreement.quality_report``: a reading of each agreement
number in words, and warnings where the numbers say the labels are not worth training on.

Alpha and kappa share one scale: 1 is perfect agreement, 0 is what annotators picking labels at
random (with the same label frequencies) would reach, below 0 is systematic disagreement.
Krippendorff calls alpha >= 0.8 reliable and accepts >= 0.667 for tentative conclusions; below
0.2 is about chance (Landis and Koch's "slight" agreement), and the page warns there.
"""

from __future__ import annotations

from typing import Any

RELIABLE, TENTATIVE, CHANCE = 0.8, 0.667, 0.2
FEW_UNITS = 30  # with fewer items judged twice, one item moves alpha by several hundredths

EXPLAIN = {
    "alpha": "Krippendorff's alpha: how much more all annotators agree than chance would make "
             "them, over every item judged at least twice (1 = perfect, 0 = chance, below 0 = "
             "systematic disagreement; 0.8 or more is reliable, 0.667 tentative).",
    "levels": "Nominal counts any two different verdicts as a disagreement; ordinal also counts "
              "how far apart they are (A better vs B better is further than A better vs tie).",
    "kappa": "Cohen's kappa: the same chance-corrected agreement for one pair of annotators, on "
             "the items both judged (1 = always agree, 0 = no more often than chance).",
    "raw": "Raw agreement: the share of pairs of verdicts on one item that are identical, not "
           "corrected for chance (two annotators always answering 'A' agree 100%).",
    "left_bias": "Left bias: the share of pairwise wins that went to the response shown on the "
                 "left; 0.5 means position did not matter.",
    "gold": "Gold accuracy: the share of an annotator's gold items where they gave the known "
            "answer.",
}


def reading(value: float | None) -> str:
    """A word for an alpha or kappa value."""
    if value is None:
        return "undefined"
    if value >= RELIABLE:
        return "reliable"
    if value >= TENTATIVE:
        return "tentative"
    if value >= CHANCE:
        return "low"
    return "near chance" if value >= 0 else "below chance"


def _chance_warning(what: str, value: float) -> str:
    if value < 0:
        return (f"{what} is {value:.2f}: annotators disagree more often than chance would make "
                f"them. Check that everyone reads the guidelines (and left / right) the same way.")
    return (f"{what} is {value:.2f}: agreement is at about the level of chance, so these labels "
            f"carry little signal. Check the guidelines, the items and the annotators before "
            f"training on them.")


def quality_view(report: dict[str, Any]) -> dict[str, Any]:
    """The report with a ``reading`` beside every alpha and kappa, and a list of ``warnings``."""
    warnings: list[str] = []
    tasks = []
    for task, numbers in report["tasks"].items():
        alphas = [{"level": level, "value": numbers[f"alpha_{level}"],
                   "reading": reading(numbers[f"alpha_{level}"])}
                  for level in ("nominal", "ordinal")]
        nominal = numbers["alpha_nominal"]
        if numbers["units"] == 0:
            warnings.append(f"{task}: no item has been judged by two annotators yet, so there is "
                            f"no agreement to measure.")
        elif nominal is None:
            warnings.append(f"{task}: alpha is undefined: every verdict is the same, so chance "
                            f"and real agreement cannot be told apart.")
        else:
            if nominal < CHANCE:
                warnings.append(f"{task}: " + _chance_warning("Krippendorff's alpha", nominal))
            if numbers["units"] < FEW_UNITS:
                warnings.append(f"{task}: only {numbers['units']} items were judged by two or "
                                f"more annotators; alpha is rough with fewer than {FEW_UNITS}.")
        kappas = [{**pair, "reading": reading(pair["kappa"])} for pair in numbers["kappa"]]
        for pair in kappas:
            if pair["kappa"] is not None and pair["kappa"] < CHANCE:
                warnings.append(f"{task}: " + _chance_warning(
                    f"Cohen's kappa of {pair['a']} and {pair['b']} ({pair['shared']} shared items)",
                    pair["kappa"]))
        tasks.append({"task": task, "units": numbers["units"], "alphas": alphas,
                      "raw_agreement": numbers["raw_agreement"], "kappas": kappas})
    return {**report, "tasks": tasks, "warnings": warnings, "explain": EXPLAIN}
