"""Format rewards for reasoning models: ``<think>…</think><answer>…</answer>``.

``extract_answer`` is the one place that reads an ``<answer>`` tag; the math and code rewards use
it too, so a completion's answer means the same thing to every reward.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tether.rewards.base import completion_text

# Tag contents may not contain another think/answer tag, so "<answer>a</answer><answer>b</answer>"
# cannot match as one answer "a</answer><answer>b".
_NO_TAG = r"(?:(?!</?think>|</?answer>).)*"
_THINK_ANSWER = re.compile(rf"\s*<think>{_NO_TAG}</think>\s*<answer>({_NO_TAG})</answer>\s*", re.DOTALL)
_ANSWER = re.compile(r"<answer>((?:(?!</?answer>).)*)</answer>", re.DOTALL)


def extract_answer(text: str) -> str | None:
    """The stripped content of the last ``<answer>…</answer>`` in ``text``.

    None when there is no closed answer tag (e.g. a truncated completion) or it is blank.
    """
    matches = _ANSWER.findall(text)
    if not matches:
        return None
    answer = matches[-1].strip()
    return answer or None


def think_answer_format_reward(prompts: Sequence[Any], completions: Sequence[Any],
                               **_columns: Any) -> list[float]:
    """1.0 when a completion is exactly ``<think>…</think>`` then ``<answer>…</answer>``, else 0.0.

    Whitespace is allowed before, between and after the two blocks; nothing else is. The think
    block may be empty, the answer may not, and neither may contain a think/answer tag.
    """
    scores = []
    for completion in completions:
        match = _THINK_ANSWER.fullmatch(completion_text(completion))
        scores.append(1.0 if match is not None and match.group(1).strip() else 0.0)
    return scores
