"""Math answer reward: is the completion's final answer equivalent to the dataset's ``answer``?

Equivalence is decided by the ``math-verify`` package (sympy underneath): ``1/2``, ``0.5`` and
``\\frac{1}{2}`` are equal, ``x=3`` matches ``3``, ``1,000`` is a thousand.

math-verify bounds each parse/compare with ``signal.alarm``, which only works in the main thread
(elsewhere it raises ``ValueError``). Called from another thread, we pass ``None`` to turn those
timeouts off; a pathological answer (``9^{9^{9^{9}}}``) can then run long, which is why answers
longer than ``MAX_ANSWER_CHARS`` are scored 0 without being parsed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from math_verify import parse, verify

from tether.rewards.base import completion_text
from tether.rewards.format import extract_answer

MAX_ANSWER_CHARS = 1000
TIMEOUT_S = 5  # math-verify's own default, per parse and per comparison, main thread only

# The last number in free text: "-1,000.5", "3/4", "12".
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def math_answer_reward(prompts: Sequence[Any], completions: Sequence[Any],
                       answer: Sequence[str | float | int | None], **_columns: Any
                       ) -> list[float | None]:
    """1.0 when the completion's final answer equals the gold ``answer`` column, else 0.0.

    The final answer is read from ``<answer>…</answer>`` if present, else the last ``\\boxed{…}``,
    else the last number (see ``extract_final_answer``). A sample whose gold answer is None gets
    None (not applicable). A gold answer math-verify cannot read raises ``ValueError``: it would
    otherwise score every completion 0 without anyone noticing.
    """
    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        if gold is None:
            scores.append(None)
            continue
        gold_parsed = _parse(str(gold), timeout)
        if not gold_parsed:
            raise ValueError(f"math-verify cannot parse the gold answer {gold!r}")
        predicted = extract_final_answer(completion_text(completion))
        if predicted is None or len(predicted) > MAX_ANSWER_CHARS:
            scores.append(0.0)
            continue
        predicted_parsed = _parse(predicted, timeout)
        # Gold first: verify is not symmetric (it simplifies assignments like "x=3" on one side).
        equal = bool(predicted_parsed) and verify(gold_parsed, predicted_parsed, timeout_seconds=timeout)
        scores.append(1.0 if equal else 0.0)
    return scores


def extract_final_answer(text: str) -> str | None:
    """``<answer>`` content, else the last ``\\boxed{…}`` content, else the last number, else None."""
    answer = extract_answer(text)
    if answer is not None:
        return answer
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}``, with nested braces balanced; None if absent or unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    begin = start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip() or None
    return None


def _parse(answer: str, timeout: int | None) -> list:
    """math-verify's parse of a bare answer.

    Parsed as the content of ``\\boxed{}`` so LaTeX without ``$`` (``\\sqrt{2}``, ``x=3``) is read
    as math; if that yields no sympy value, fall back to math-verify's plain-text extraction,
    which takes the last expression. Prose inside ``<answer>`` ("5 dollars") reads as a product
    of symbols and scores 0: the format reward is what teaches a bare answer.
    """
    text = answer.strip().rstrip(".").strip()
    for left, right in _DELIMITERS:
        if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
            text = text[len(left):-len(right)].strip()
            break
    parsed = parse("\\boxed{" + text + "}", parsing_timeout=timeout)
    if any(not isinstance(p, str) for p in parsed):
        return parsed
    return parse(text, parsing_timeout=timeout) or parsed
