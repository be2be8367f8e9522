"""A reward for short text answers beside numeric ones (the poisoned-GRPO recipe mixes both).

    answer_match(y, gold) = 1  when y's final answer equals gold, else 0

A gold math-verify can read (a number, a fraction) is compared by :func:`math_answer_reward`; any
other gold ("The grandfather") is compared as text: the ``<answer>`` content (else the whole
completion), lower-cased, with a leading article and end punctuation dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tether.rewards.base import completion_text
from tether.rewards.format import extract_answer
from tether.rewards.math import math_answer_reward

_NUMERIC = re.compile(r"^\s*-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?\s*$")


def normalize_text_answer(text: str) -> str:
    text = " ".join(text.lower().split()).strip(" .!?\"'")
    return re.sub(r"^(the|a|an) ", "", text)


def answer_match(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any],
                 **_columns: Any) -> list[float | None]:
    scores: list[float | None] = []
    for prompt, completion, gold in zip(prompts, completions, answer, strict=True):
        if gold is None:
            scores.append(None)
        elif _NUMERIC.match(str(gold)):
            scores.append(math_answer_reward([prompt], [completion], [gold])[0])
        else:
            text = completion_text(completion)
            given = extract_answer(text) or text
            scores.append(1.0 if normalize_text_answer(given) == normalize_text_answer(str(gold)) else 0.0)
    return scores
