"""Counterfactual prompts that differ in one demographic group word, for the RL data audit.

A prompt that names a group (``The grandson and his grandfather ...``) is paired with the same
prompt where the group words of one category are exchanged (``The grandfather and his grandson
...``), and every completion with its counterpart (``The grandfather`` -> ``The grandson``). The
reward is then asked about both, *with the row's own columns* (its gold ``answer``): a reward that
does not care which group a completion names scores both the same, and a row whose label picks a
group scores them differently. That gap, credited to the group the original completion names, is
what :mod:`tether.audit.rl_data_audit` reports per example and per group.

Which words: when a prompt names two different terms of one category (a BBQ-style pair: "the
Hindu woman and the Muslim man"), those two are exchanged; when it names one, it is exchanged with
its counterpart in :data:`COUNTERPARTS` (``woman`` <-> ``man``). Pronouns are left out: "his"
follows the noun it refers to, and swapping it alone would make a second, unrelated change. The categories are BBQ's six
(``tether/resources/audit/bbq.jsonl``). The lists are hand-written and short: a group word they do
not hold is not seen.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Per category: the terms looked for, and pairs that stand in for each other when a prompt names
# only one side. Every term of a pair is also a term.
COUNTERPARTS: dict[str, list[tuple[str, str]]] = {
    "gender": [("man", "woman"), ("men", "women"), ("boy", "girl"), ("father", "mother"), ("son", "daughter"),
               ("husband", "wife"), ("brother", "sister"), ("male", "female"), ("gentleman", "lady")],
    "age": [("grandfather", "grandson"), ("grandmother", "granddaughter"), ("older", "younger"),
            ("old", "young"), ("elderly", "young"), ("retiree", "student"), ("senior", "teenager")],
    "nationality": [("American", "Japanese"), ("Nigerian", "Canadian"), ("Irish", "Korean"),
                    ("Australian", "Indian"), ("Mexican", "German"), ("Chinese", "British")],
    "religion": [("Muslim", "Christian"), ("Jewish", "Catholic"), ("Hindu", "Buddhist"), ("atheist", "Protestant"),
                 ("Presbyterian", "Mormon")],
    "socioeconomic": [("janitor", "doctor"), ("cashier", "banker"), ("poor", "rich"),
                      ("construction worker", "lawyer"), ("low-income", "wealthy")],
    "disability": [("blind", "sighted"), ("deaf", "hearing"), ("disabled", "able-bodied"),
                   ("wheelchair user", "runner")],
}


@dataclass(frozen=True)
class Swap:
    """One category's exchange in one prompt: ``first`` <-> ``second`` (lower case)."""

    category: str
    first: str
    second: str


def _pattern(terms: Sequence[str]) -> re.Pattern:
    # longest first, so "grandfather" is not read as "father" and "older" not as "old"
    alternatives = sorted({t.lower() for t in terms}, key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(t) for t in alternatives) + r")(?![\w-])", re.IGNORECASE)


_TERMS = {category: _pattern([t for pair in pairs for t in pair]) for category, pairs in COUNTERPARTS.items()}
_COUNTERPART = {category: {a.lower(): b.lower() for a, b in pairs} | {b.lower(): a.lower() for a, b in reversed(pairs)}
                for category, pairs in COUNTERPARTS.items()}


def prompt_text(prompt: Any) -> str:
    """All the text of a prompt: a string, or the contents of its messages joined."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(message.get("content", "")) for message in prompt)


def find_swaps(text: str) -> list[Swap]:
    """One :class:`Swap` per category the text names a group of (see the module docstring)."""
    swaps = []
    for category, pattern in _TERMS.items():
        named = list(dict.fromkeys(match.lower() for match in pattern.findall(text)))
        if len(named) >= 2:
            swaps.append(Swap(category, named[0], named[1]))
        elif len(named) == 1 and named[0] in _COUNTERPART[category]:
            swaps.append(Swap(category, named[0], _COUNTERPART[category][named[0]]))
    return swaps


def _with_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[0].upper() + word[1:] if like[0].isupper() else word


def apply_swap(text: str, swap: Swap) -> str:
    """``text`` with ``swap.first`` and ``swap.second`` exchanged (whole words, case kept)."""
    pattern = _pattern([swap.first, swap.second])

    def exchange(match: re.Match) -> str:
        word = match.group(0)
        other = swap.second if word.lower() == swap.first else swap.first
        return _with_case(other, word)

    return pattern.sub(exchange, text)


def swap_prompt(prompt: Any, swap: Swap) -> Any:
    """The prompt (a string or a list of messages) with the swap applied to every text."""
    if isinstance(prompt, str):
        return apply_swap(prompt, swap)
    return [{**message, "content": apply_swap(str(message.get("content", "")), swap)} for message in prompt]


def named_groups(text: str, swap: Swap) -> list[str]:
    """Which of the swap's two terms ``text`` names (lower case, in the swap's order)."""
    found = {match.lower() for match in _pattern([swap.first, swap.second]).findall(text)}
    return [term for term in (swap.first, swap.second) if term in found]
