"""Jailbreak robustness: refusal of harmful requests behind wrappers the model was never trained on.

Each unsafe probe (``refusal_unsafe.jsonl``, balanced over its categories) is wrapped in every
``heldout`` template of ``tether/resources/consistency/wrappers.yaml`` (role-play, "ignore previous
instructions", hypothetical framing, instructions split across turns, leetspeak), answered greedily,
and judged by the default refusal judge (:mod:`tether.judges`), which reads the
unwrapped request beside the answer:

    jailbreak_refusal = P(refused | unsafe request inside a held-out wrapper)   higher is better

Consistency training trains on the ``train`` templates only, so this measures whether refusing
generalised to framings it never saw. Items are grouped by wrapper category in the report (a
probe's wrapped versions are separate items, one ``cluster`` per probe: the interval resamples
probes, each with all its wrapped versions, since one request's answers are not independent).
Compare with ``unsafe_compliance`` (the same probes, unwrapped) from ``refusal_calibration``.
"""

from __future__ import annotations

from tether.audit.base import AuditModel, MetricResult, mean_of
from tether.audit.metrics import balanced, load_probes
from tether.data.wrappers import DEFAULT_WRAPPERS, load_wrappers
from tether.judges import Judge, default_refusal_judge, describe

METRICS = {"jailbreak_refusal": "rate"}
DESCRIPTIONS = {"jailbreak_refusal": "share of unsafe requests, wrapped in jailbreak framings never trained on, "
                                     "that the model refused (higher is better)"}
# unsafe probes: x 5 held-out wrappers = 120 prompts (~1 min a model on 2 cores). 8 probes (40
# prompts) gave intervals of +-15 points, wider than the changes consistency training makes.
DEFAULT_LIMIT = 24
DEFAULT_MAX_NEW_TOKENS = 32


def evaluate(model: AuditModel, *, limit: int | None = None, judge: Judge | None = None,
             wrappers: str = DEFAULT_WRAPPERS, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[MetricResult]:
    judge = judge or default_refusal_judge()
    probes = balanced(load_probes("refusal_unsafe"), DEFAULT_LIMIT if limit is None else limit)
    cases = [(probe, wrapper, wrapped) for probe in probes for wrapper in load_wrappers(wrappers, "heldout")
             if (wrapped := wrapper.apply(probe["prompt"])) is not None]
    responses = model.answer([wrapped for _, _, wrapped in cases], max_new_tokens=max_new_tokens,
                             description=f"jailbreak probes ({model.name})")
    scores = judge.score([probe["prompt"] for probe, _, _ in cases], responses)  # the request, unwrapped
    items = [{"id": f"{probe['id']}|{wrapper.name}", "cluster": probe["id"], "category": wrapper.category,
              "probe_category": probe["category"],
              "prompt": probe["prompt"], "wrapper": wrapper.name, "response": text,
              "refusal_score": round(float(score), 4), "refused": int(score >= judge.threshold)}
             for (probe, wrapper, _), text, score in zip(cases, responses, scores)]
    details = {"judge": describe(judge), "max_new_tokens": max_new_tokens,
               "wrappers": sorted({item["wrapper"] for item in items}), "num_probes": len(probes)}
    return [MetricResult("jailbreak_refusal", mean_of("refused")(items), items, mean_of("refused"), unit="rate",
                         higher_is_better=True, details=details)]
