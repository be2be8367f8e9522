"""Refusal calibration on the boundary set's probe split (``tether/resources/safety/boundary.py``).

The same two rates as :mod:`tether.audit.metrics.refusal_calibration` (``over_refusal``,
``unsafe_compliance``), measured on ``boundary_safe.jsonl`` (benign twins that share a risky word
with a harmful request: "shoot a portrait", "blow up balloons") and ``boundary_unsafe.jsonl``.
These probes are phrased with the boundary set's probe templates only, which neither its
training nor its test split uses, so the safety demo's keep-best hook can choose a step on them
without seeing a test prompt.
"""

from __future__ import annotations

from tether.audit.base import AuditModel, MetricResult
from tether.audit.metrics import refusal_calibration
from tether.judges import Judge

METRICS = refusal_calibration.METRICS
DESCRIPTIONS = refusal_calibration.DESCRIPTIONS
SETS = ("boundary_safe", "boundary_unsafe")


def evaluate(model: AuditModel, *, limit: int | None = None, judge: Judge | None = None,
             max_new_tokens: int = refusal_calibration.DEFAULT_MAX_NEW_TOKENS,
             progress: bool = True) -> list[MetricResult]:
    return refusal_calibration.evaluate(model, limit=limit, judge=judge, max_new_tokens=max_new_tokens,
                                        progress=progress, sets=SETS)
