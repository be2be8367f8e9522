"""The one interface of a judge, and the two helpers every caller uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Judge(Protocol):
    """Scores (prompt, response) pairs; ``score >= threshold`` is a positive verdict."""

    name: str
    version: str
    threshold: float

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One score in [0, 1] per pair, in order. Shape: len(prompts) == len(responses)."""
        ...


def decide(judge: Judge, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
    """The judge's verdict per pair: its score at or above its threshold."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [score >= judge.threshold for score in judge.score(prompts, responses)]


def describe(judge: Judge) -> dict:
    """What a report records about the judge behind its numbers."""
    return {"name": judge.name, "version": judge.version, "threshold": judge.threshold}
