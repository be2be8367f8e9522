"""How far to trust a refusal judge: its agreement with labels people wrote.

Label rows (JSONL) hold the response (``response``, or ``text`` in the older bundled set), the
``prompt`` when known, and the label: ``refusal`` (true/false) or ``label`` in
``full_refusal | partial_refusal | compliance``; refusal = full or partial (XSTest's convention).

Accuracy, precision and recall come with 95% Wilson intervals: each is a binomial proportion
(correct / all, true refusals / called refusals, found / actual refusals), and Wilson's interval
keeps its coverage near 95% for small n and rates near 0 or 1, where the normal approximation
does not. The rows are assumed independent; several responses to one prompt are not, so the
intervals are a little narrow on such sets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tether.errors import DataValidationError
from tether.judges.base import Judge, decide, describe

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
BUNDLED_LABELS = RESOURCES / "safety" / "refusal_labeled.jsonl"  # 148 responses, the patterns' own test set
# 660 responses of SmolLM2 base and trained checkpoints, each read and labeled by a person, split by prompt
# (tether/resources/refusal_labels/README.md): reports quote a judge's accuracy on the test half, and a
# judge bound is calibrated on the calibration half by default.
LABELED_SET = RESOURCES / "refusal_labels" / "labeled.jsonl"
REFUSAL_CLASSES = {"full_refusal": True, "partial_refusal": True, "compliance": False}


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion; (0, 1) with no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    center = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, center - half), min(1.0, center + half)


@dataclass(frozen=True)
class LabeledResponse:
    prompt: str
    response: str
    refusal: bool
    label: str | None = None  # the three-class label when the row had one


def read_labels(path: str | Path, split: str | None = None) -> list[LabeledResponse]:
    """Label rows from a JSONL file (see the module docstring); with ``split``, only the rows whose
    ``split`` field is that (``calibration`` or ``test`` in the labeled set).

    Raises:
        DataValidationError: naming the file and line of a row without a response or a label.
    """
    rows = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataValidationError(f"{where}: not JSON ({error.msg})") from None
        if split is not None and row.get("split") != split:
            continue
        response = row.get("response", row.get("text"))
        if not isinstance(response, str):
            raise DataValidationError(f"{where}: needs a 'response' string")
        label = row.get("label")
        if label is not None:
            if label not in REFUSAL_CLASSES:
                raise DataValidationError(f"{where}: label {label!r} is not one of {', '.join(REFUSAL_CLASSES)}")
            refusal = REFUSAL_CLASSES[label]
        elif isinstance(row.get("refusal"), bool):
            refusal = row["refusal"]
        else:
            raise DataValidationError(f"{where}: needs 'refusal' (true/false) or 'label' "
                                      f"({', '.join(REFUSAL_CLASSES)})")
        rows.append(LabeledResponse(str(row.get("prompt") or ""), response, refusal, label))
    return rows


def _proportion(successes: int, trials: int) -> dict:
    low, high = wilson_interval(successes, trials)
    return {"value": successes / trials if trials else None, "ci95": [low, high], "n": trials}


def agreement(predicted: Sequence[bool], rows: Sequence[LabeledResponse]) -> dict:
    """Accuracy, precision, recall (each with its Wilson interval and n), the confusion counts,
    and the share called refusal per three-class label where the rows have one."""
    actual = [row.refusal for row in rows]
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    fn = sum(a and not p for p, a in zip(predicted, actual))
    tn = len(rows) - tp - fp - fn
    by_class = {}
    for label in REFUSAL_CLASSES:
        flags = [p for p, row in zip(predicted, rows) if row.label == label]
        if flags:
            by_class[label] = {"called_refusal": _proportion(sum(flags), len(flags))}
    return {"n": len(rows), "accuracy": _proportion(tp + tn, len(rows)),
            "precision": _proportion(tp, tp + fp), "recall": _proportion(tp, tp + fn),
            "confusion": {"true_refusal": tp, "false_refusal": fp, "missed_refusal": fn, "true_compliance": tn},
            "by_label": by_class}


def validate(judge: Judge, rows: Sequence[LabeledResponse]) -> dict:
    """The judge's agreement with ``rows`` (see :func:`agreement`), and which judge it was."""
    predicted = decide(judge, [r.prompt for r in rows], [r.response for r in rows])
    return {"judge": describe(judge), **agreement(predicted, rows)}


_ACCURACY: dict[tuple, dict] = {}


def bundled_accuracy(judge: Judge) -> dict:
    """The judge's accuracy (with its interval) on the labeled set's test half, computed once per
    judge name, version and threshold: what a report prints beside a refusal rate."""
    key = (judge.name, judge.version, judge.threshold)
    if key not in _ACCURACY:
        report = validate(judge, read_labels(LABELED_SET, split="test"))
        _ACCURACY[key] = {"labels": "refusal_labels/labeled.jsonl, test half", **report["accuracy"]}
    return _ACCURACY[key]
