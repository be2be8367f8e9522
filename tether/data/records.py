"""Record schemas: the four kinds of training data tether reads.

Field names follow TRL's dataset formats so users can bring data unchanged:

| kind         | fields                                                         |
|--------------|----------------------------------------------------------------|
| `sft`        | `prompt` + `completion` strings, `messages` (a chat), or `text` |
| `preference` | `prompt` + `chosen` + `rejected`, plain text or conversational  |
|              | or only `chosen` + `rejected` as whole conversations (TRL's     |
|              | implicit prompt: their shared first messages are the prompt)    |
| `ranking`    | `prompt` + `responses` (K strings) + `ranks` (K ints, 1 = best) |
| `verifiable` | `prompt` + `answer`; every other column kept in `extras`        |
| `prompt`     | `prompt` (TRL's prompt-only rows); `answer` optional, as above  |

A conversational prompt is a list of `{"role", "content"}` messages; its `chosen`/`rejected` are
strings or lists of assistant messages. Every record keeps an optional `id` and the `Location` it
came from, so any later error can point back at the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, TypedDict


class Message(TypedDict):
    role: str  # "system" | "user" | "assistant" | "tool" (tool output in agent episodes)
    content: str


ROLES = ("system", "user", "assistant", "tool")

Prompt = str | list[Message]
Completion = str | list[Message]


@dataclass(frozen=True)
class Location:
    """Where a record came from: a JSONL file and its 1-based line; or a parquet file, a
    `save_to_disk` folder, `<dataset>` or `<list>` and the 0-based row index (`dataset[line]`)."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class SFTRecord:
    """Supervised fine-tuning: `prompt` + `completion`, a chat in `messages`, or plain `text`.

    With `messages`, the loss covers the assistant turns only; with `text` (TRL's language-modeling
    rows) it covers every token.
    """

    prompt: str | None = None
    completion: str | None = None
    messages: list[Message] | None = None
    text: str | None = None
    id: str | None = None
    location: Location | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(frozen=True)
class PreferenceRecord:
    """One preference pair. `group_id` is set when the pair comes from a ranking (its id)."""

    prompt: Prompt
    chosen: Completion
    rejected: Completion
    id: str | None = None
    location: Location | None = None
    group_id: str | None = None


@dataclass(frozen=True)
class RankingRecord:
    """K responses to one prompt with ranks (1 = best, ties allowed)."""

    prompt: Prompt
    responses: list[str]
    ranks: list[int]
    id: str | None = None
    location: Location | None = None


@dataclass(frozen=True)
class VerifiableRecord:
    """A prompt with a checkable answer (None in prompt-only data, kind `prompt`). `extras` holds
    the other columns, passed to reward functions as keyword arguments (TRL's
    `reward_func(prompts, completions, **columns)`)."""

    prompt: Prompt
    answer: str | None
    extras: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    location: Location | None = None


Record = SFTRecord | PreferenceRecord | RankingRecord | VerifiableRecord


def expand_ranking(record: RankingRecord) -> list[PreferenceRecord]:
    """The K-choose-2 preference pairs of a ranking, tied pairs skipped.

    In each pair the response with the lower rank number is `chosen`. Pairs keep the ranking's
    id as `group_id` (its location when it has no id) and get ids `GROUP/i-j` (response indices).
    """
    group_id = record.id if record.id is not None else str(record.location)
    pairs = []
    for i, j in combinations(range(len(record.responses)), 2):
        if record.ranks[i] == record.ranks[j]:
            continue  # a tie says nothing about which response is better
        better, worse = (i, j) if record.ranks[i] < record.ranks[j] else (j, i)
        pairs.append(PreferenceRecord(
            prompt=record.prompt,
            chosen=record.responses[better],
            rejected=record.responses[worse],
            id=f"{group_id}/{i}-{j}",
            location=record.location,
            group_id=group_id,
        ))
    return pairs
