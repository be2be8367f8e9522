"""When a sampled completion is over: end-of-turn tokens and stop strings.

A completion ends at the first of:
  - "eos":    the model wrote EOS or an end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ...);
  - "stop":   its decoded text contains one of the user's stop strings;
  - "length": it reached ``max_new_tokens``.

Stop strings are matched on text, not tokens, because one string can be split across tokens in
many ways (``"\\n\\n"`` may be one token or two). As in vLLM and TRL, the stop string is cut from
the text by default; the token ids keep every token sampled, including the one that completed the
stop string, because those are the tokens whose log-probabilities the trainer scores. A stop
string that is itself a special token of the vocabulary (``"<|endoftext|>"``) never shows in text
decoded without special tokens, so it is matched by token id instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from tether.data.tokenize import end_of_turn_ids

FinishReason = Literal["stop", "eos", "length"]


def end_token_ids(tokenizer: Any, model: Any = None) -> set[int]:
    """Ids that end a completion with reason "eos": the tokenizer's EOS and known end-of-turn
    tokens, plus whatever the model's generation config lists as EOS (an int or a list)."""
    ids = set(end_of_turn_ids(tokenizer))
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, Iterable):
        ids.update(int(i) for i in configured)
    return ids


def special_stop_ids(tokenizer: Any, stop: Sequence[str]) -> set[int]:
    """Ids of the stop strings that are whole special tokens (they vanish from decoded text)."""
    special = set(tokenizer.all_special_tokens) | {
        token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values()
        if getattr(token, "special", False)}
    return {tokenizer.convert_tokens_to_ids(s) for s in stop if s in special}


def find_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index in ``text`` where the earliest stop string begins, or None when none occurs.

    >>> find_stop("4\\n\\nDone", ["Done", "\\n\\n"])
    1
    """
    found = [index for index in (text.find(s) for s in stop if s) if index >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stop: Sequence[str], *, keep_stop: bool = False) -> str:
    """``text`` up to the earliest stop string (through it with ``keep_stop``); whole if none."""
    index = find_stop(text, stop)
    if index is None:
        return text
    if not keep_stop:
        return text[:index]
    # Several stop strings can begin at the same index: keep the longest, which ends the match.
    matched = max((s for s in stop if s and text.startswith(s, index)), key=len)
    return text[:index + len(matched)]
