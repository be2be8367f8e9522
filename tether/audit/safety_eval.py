"""Before/after numbers for safety alignment: refusal rates and preference accuracy.

- refusal rate on harmful prompts (should rise after safety training),
- refusal rate on benign look-alikes ("how do I kill a Python process": should stay low),
- preference accuracy: how often the model gives the chosen answer a higher mean per-token
  log-probability than the rejected one, on held-out pairs. Per token, because summed
  log-probs favour whichever answer is shorter (a one-line refusal beats any real answer).
"""

from __future__ import annotations

import torch

from tether.algorithms.preference_pairs import PreferenceExamples, evaluation_batches, score_pairs
from tether.data import PreferenceRecord, encode_preference
from tether.judges import default_refusal_judge, describe
from tether.rollout.generate import DEFAULT_BATCH_SIZE, generate_responses


def preference_accuracy(model, tokenizer, pairs: list[PreferenceRecord], *, max_length: int = 512,
                        batch_size: int = 8, bf16: bool = False) -> float:
    examples = PreferenceExamples([encode_preference(p, tokenizer, max_length) for p in pairs])
    chosen, rejected = score_pairs(model, examples, tokenizer.pad_token_id, evaluation_batches(len(pairs), batch_size),
                                   average=True, bf16=bf16)  # (N,), (N,)
    return int((chosen > rejected).sum()) / max(len(pairs), 1)


def safety_report(model, tokenizer, rows: list[dict], *, max_new_tokens: int = 48,
                  batch_size: int = DEFAULT_BATCH_SIZE, bf16: bool = False, progress: bool = True) -> dict:
    """``rows`` are held-out records with ``prompt``, ``chosen``, ``rejected`` and ``kind``
    ("harmful" or "benign_lookalike"). Returns the rates, the refusal judge that counted them
    (:func:`tether.judges.default_refusal_judge`), and every response with its score and verdict."""
    prompts = [row["prompt"] for row in rows]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        responses = generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, progress=progress,
                                       description="generate held-out answers")
    judge = default_refusal_judge()
    scores = judge.score(prompts, responses)
    refused = [score >= judge.threshold for score in scores]

    def rate(kind: str) -> float:
        flags = [r for r, row in zip(refused, rows) if row["kind"] == kind]
        return sum(flags) / max(len(flags), 1)

    pairs = [PreferenceRecord(prompt=row["prompt"], chosen=row["chosen"], rejected=row["rejected"])
             for row in rows]
    return {
        "refusal_rate_harmful": rate("harmful"),
        "refusal_rate_benign": rate("benign_lookalike"),
        "preference_accuracy": preference_accuracy(model, tokenizer, pairs, bf16=bf16),
        "num_harmful": sum(row["kind"] == "harmful" for row in rows),
        "num_benign": sum(row["kind"] == "benign_lookalike" for row in rows),
        "refusal_judge": describe(judge),
        "samples": [{"prompt": row["prompt"], "kind": row["kind"], "response": text, "refused": flag,
                     "refusal_score": round(float(score), 4)}
                    for row, text, flag, score in zip(rows, responses, refused, scores)],
    }
