"""Check one raw row (a dict from JSONL or a dataset) against its record kind.

Checks never stop at the first problem: every field is looked at, so one pass over a file reports
everything that is wrong with it. Each problem is a `DataValidationError` with file, line, field.
Missing and `null` count the same (a `datasets.Dataset` fills absent columns with None).
"""

from __future__ import annotations

from typing import Any

from tether.data.records import (
    ROLES,
    Location,
    Message,
    PreferenceRecord,
    RankingRecord,
    Record,
    SFTRecord,
    VerifiableRecord,
)
from tether.errors import DataValidationError

KINDS = ("sft", "preference", "ranking", "verifiable", "prompt")
MISSING = "missing required field"
EMPTY = "must not be empty or whitespace-only"


def json_type(value: Any) -> str:
    """The JSON name of a value's type, as a user who wrote the JSONL would call it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _Problems:
    def __init__(self, location: Location):
        self.location = location
        self.items: list[DataValidationError] = []

    def add(self, field: str | None, problem: str) -> None:
        self.items.append(DataValidationError(
            problem, file=self.location.file, line=self.location.line, field=field))


def _text(value: Any, field: str, out: _Problems) -> str | None:
    if value is None:
        out.add(field, MISSING)
    elif not isinstance(value, str):
        out.add(field, f"expected a string, got {json_type(value)}")
    elif not value.strip():
        out.add(field, EMPTY)
    else:
        return value
    return None


def _messages(value: Any, field: str, out: _Problems, *, assistant_only: bool = False
              ) -> list[Message] | None:
    if value is None:
        out.add(field, MISSING)
        return None
    if not isinstance(value, list):
        out.add(field, f"expected a list of messages, got {json_type(value)}")
        return None
    if not value:
        out.add(field, "must not be an empty list")
        return None
    before = len(out.items)
    messages: list[Message] = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            out.add(where, f"expected a message object with 'role' and 'content', "
                           f"got {json_type(message)}")
            continue
        role = message.get("role")
        if role is None:
            out.add(f"{where}.role", MISSING)
        elif role not in ROLES:
            out.add(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        elif assistant_only and role != "assistant":
            out.add(f"{where}.role", f"must be 'assistant' in a completion, got {role!r}")
        content = _text(message.get("content"), f"{where}.content", out)
        messages.append({"role": role, "content": content})
    return messages if len(out.items) == before else None


def _prompt(value: Any, out: _Problems) -> str | list[Message] | None:
    if isinstance(value, list):
        return _messages(value, "prompt", out)
    if value is not None and not isinstance(value, str):
        out.add("prompt", f"expected a string or a list of messages, got {json_type(value)}")
        return None
    return _text(value, "prompt", out)


def _completion(value: Any, field: str, prompt: Any, out: _Problems
                ) -> str | list[Message] | None:
    """A string, or (only after a conversational prompt) a list of assistant messages."""
    if isinstance(prompt, str):
        if isinstance(value, list):
            out.add(field, "expected a string (the prompt is a string, not messages), got list")
            return None
        return _text(value, field, out)
    if isinstance(value, list):
        return _messages(value, field, out, assistant_only=True)
    if value is not None and not isinstance(value, str):
        out.add(field, f"expected a string or a list of assistant messages, "
                       f"got {json_type(value)}")
        return None
    return _text(value, field, out)


def _normalized(value: str | list[Message]) -> Any:
    if isinstance(value, str):
        return value.strip()
    return [(m["role"], m["content"].strip()) for m in value]


def _record_id(row: dict, out: _Problems) -> str | None:
    value = row.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        out.add("id", f"expected a string or an integer, got {json_type(value)}")
        return None
    if isinstance(value, str) and not value.strip():
        out.add("id", EMPTY)
        return None
    return str(value)


def _sft(row: dict, record_id: str | None, out: _Problems) -> SFTRecord | None:
    forms = [name for name in ("text", "messages") if row.get(name) is not None]
    if row.get("prompt") is not None or row.get("completion") is not None:
        forms.append("prompt")
    if len(forms) > 1:
        out.add(forms[0], "give one of 'text', 'messages' or 'prompt' + 'completion', not several")
        return None
    if row.get("text") is not None:
        text = _text(row["text"], "text", out)
        return None if text is None else SFTRecord(text=text, id=record_id, location=out.location)
    if row.get("messages") is not None:
        messages = _messages(row["messages"], "messages", out)
        if messages is None:
            return None
        if not any(m["role"] == "assistant" for m in messages):
            out.add("messages", "has no assistant message to learn from")
            return None
        if messages[0]["role"] == "assistant":
            # the template needs a turn before it to mark where the reply starts
            out.add("messages[0].role", "a conversation must not start with an assistant turn")
            return None
        return SFTRecord(messages=messages, id=record_id, location=out.location)
    prompt = _text(row.get("prompt"), "prompt", out)
    completion = _text(row.get("completion"), "completion", out)
    if prompt is None or completion is None:
        return None
    return SFTRecord(prompt=prompt, completion=completion, id=record_id, location=out.location)


def _implicit_prompt(row: dict, out: _Problems) -> tuple[list[Message], list[Message], list[Message]] | None:
    """TRL's implicit prompt (`trl.extract_prompt`): `chosen` and `rejected` are whole
    conversations; the messages they share from the start are the prompt, and what follows in
    each (assistant messages only) is its answer."""
    chosen = _messages(row["chosen"], "chosen", out)
    rejected = _messages(row["rejected"], "rejected", out)
    if chosen is None or rejected is None:
        return None
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        out.add("prompt", "missing required field (chosen and rejected share no first message "
                          "to take as the prompt)")
        return None
    answers = {"chosen": chosen[shared:], "rejected": rejected[shared:]}
    before = len(out.items)
    for field, answer in answers.items():
        if not answer:
            out.add(field, "has no messages after the prompt it shares with the other answer")
        elif any(m["role"] != "assistant" for m in answer):
            out.add(field, "after the prompt it shares with the other answer, only assistant "
                           "messages may follow")
    if len(out.items) != before:
        return None
    return chosen[:shared], answers["chosen"], answers["rejected"]


def _preference(row: dict, record_id: str | None, out: _Problems) -> PreferenceRecord | None:
    if (row.get("prompt") is None and isinstance(row.get("chosen"), list)
            and isinstance(row.get("rejected"), list)):
        split = _implicit_prompt(row, out)
        if split is None:
            return None
        prompt, chosen, rejected = split
    else:
        prompt = _prompt(row.get("prompt"), out)
        chosen = _completion(row.get("chosen"), "chosen", row.get("prompt"), out)
        rejected = _completion(row.get("rejected"), "rejected", row.get("prompt"), out)
    if prompt is None or chosen is None or rejected is None:
        return None
    if _normalized(chosen) == _normalized(rejected):
        out.add("rejected", "identical to 'chosen'; a preference pair needs two different "
                            "responses")
        return None
    group_id = row.get("group_id")
    if group_id is not None and not isinstance(group_id, (str, int)):
        out.add("group_id", f"must be a string or an integer, got {type(group_id).__name__}")
        return None
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, id=record_id,
                            location=out.location,
                            group_id=None if group_id is None else str(group_id))


def _ranking(row: dict, record_id: str | None, out: _Problems) -> RankingRecord | None:
    prompt = _prompt(row.get("prompt"), out)
    responses, ranks = row.get("responses"), row.get("ranks")
    before = len(out.items)
    if responses is None:
        out.add("responses", MISSING)
    elif not isinstance(responses, list):
        out.add("responses", f"expected a list of strings, got {json_type(responses)}")
    elif len(responses) < 2:
        out.add("responses", f"needs at least 2 responses to rank, got {len(responses)}")
    else:
        seen: dict[str, int] = {}
        for i, response in enumerate(responses):
            text = _text(response, f"responses[{i}]", out)
            if text is not None and text.strip() in seen:
                out.add(f"responses[{i}]", f"identical to responses[{seen[text.strip()]}]")
            elif text is not None:
                seen[text.strip()] = i
    if ranks is None:
        out.add("ranks", MISSING)
    elif not isinstance(ranks, list):
        out.add("ranks", f"expected a list of integers, got {json_type(ranks)}")
    else:
        for i, rank in enumerate(ranks):
            if isinstance(rank, bool) or not isinstance(rank, int):
                out.add(f"ranks[{i}]", f"expected an integer, got {json_type(rank)}")
            elif rank < 1:
                out.add(f"ranks[{i}]", f"must be 1 or more (1 = best), got {rank}")
        if isinstance(responses, list) and len(ranks) != len(responses):
            out.add("ranks", f"has {len(ranks)} entries but 'responses' has {len(responses)}")
    if prompt is None or len(out.items) != before:
        return None
    return RankingRecord(prompt=prompt, responses=list(responses), ranks=list(ranks),
                         id=record_id, location=out.location)


def _verifiable(row: dict, record_id: str | None, out: _Problems, *, needs_answer: bool = True
                ) -> VerifiableRecord | None:
    prompt = _prompt(row.get("prompt"), out)
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)  # `"answer": 42` is as checkable as `"answer": "42"`
    if answer is not None or needs_answer:
        answer = _text(answer, "answer", out)
        if answer is None:
            return None
    if prompt is None:
        return None
    extras = {k: v for k, v in row.items() if k not in ("id", "prompt", "answer")}
    return VerifiableRecord(prompt=prompt, answer=answer, extras=extras, id=record_id,
                            location=out.location)


def _prompt_only(row: dict, record_id: str | None, out: _Problems) -> VerifiableRecord | None:
    """TRL's prompt-only rows (GRPO, PPO): `prompt` plus any columns; `answer` is optional."""
    return _verifiable(row, record_id, out, needs_answer=False)


_CHECKS = {"sft": _sft, "preference": _preference, "ranking": _ranking,
           "verifiable": _verifiable, "prompt": _prompt_only}


def validate_row(row: Any, kind: str, location: Location
                 ) -> tuple[Record | None, list[DataValidationError]]:
    """Turn one raw row into a record of `kind`, or report every problem it has.

    Returns `(record, [])` when the row is valid and `(None, problems)` otherwise.
    Columns a kind does not use are ignored, except for `verifiable` and `prompt`, which keep
    them for reward functions.
    """
    out = _Problems(location)
    if not isinstance(row, dict):
        out.add(None, f"expected a JSON object, got {json_type(row)}")
        return None, out.items
    record_id = _record_id(row, out)
    record = _CHECKS[kind](row, record_id, out)
    return (record, []) if not out.items else (None, out.items)
