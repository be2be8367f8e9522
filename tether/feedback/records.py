"""The records feedback flows through: candidates to judge, and judgments of them.

``tether generate`` writes one ``FeedbackItem`` per JSONL line; the labeling app imports them;
people (in the app) and the AI judge (``tether judge``) both produce ``Judgment`` records, so
every downstream tool (agreement, leaderboard, exports, reward-model data) reads one format.

Verdicts, by task:

| task       | ``verdict``                                                             |
|------------|-------------------------------------------------------------------------|
| `pairwise` | ``{"winner": CANDIDATE_ID}`` or ``{"winner": "tie"}`` / ``"both_bad"``   |
| `ranking`  | ``{"ranks": {CANDIDATE_ID: rank}}``: 1 = best, equal ranks are ties;     |
|            | ``{"not_rankable": true}`` when the annotator could not rank             |
| `rating`   | ``{"ratings": {CANDIDATE_ID: score}}`` on the project's scale            |

A pairwise judgment also keeps which candidate was shown on the left (``shown_left``), so a
left-side bias can be measured, and ``source`` says who judged: ``human`` or ``ai``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TaskKind = Literal["pairwise", "ranking", "rating"]
PAIRWISE_SPECIAL = ("tie", "both_bad")


class Candidate(BaseModel):
    """One response to judge. ``model`` names what produced it (hidden from annotators)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    model: str = "unknown"


class FeedbackItem(BaseModel):
    """A prompt with two or more candidate responses: one line of ``tether generate`` output."""

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str | list[dict[str, str]]
    candidates: list[Candidate] = Field(min_length=2)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Known answer for gold items, in the same shape as a judgment's verdict.
    gold: dict[str, Any] | None = None


class Judgment(BaseModel):
    """One judge's verdict on one item."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    task: TaskKind
    verdict: dict[str, Any]
    annotator: str
    source: Literal["human", "ai"] = "human"
    reason: str | None = None
    shown_left: str | None = None  # candidate id on the left (pairwise)
    guidelines_version: int | None = None  # human judgments
    constitution_version: str | None = None  # AI judgments
    seconds: float | None = None  # time spent, for the median-time statistic
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
