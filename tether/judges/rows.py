"""Judge a JSONL file of (prompt, response) rows: ``tether judge refusal IN.jsonl --output OUT.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tether.errors import DataValidationError
from tether.judges.base import Judge


def prompt_text(prompt: Any) -> str:
    """A plain prompt, or the last user message of a chat prompt (a list of messages): what a
    judge reads as the request."""
    if isinstance(prompt, str):
        return prompt
    users = [message["content"] for message in prompt if message.get("role") == "user"]
    return users[-1] if users else str(prompt[-1]["content"])


def read_pairs(path: str | Path) -> list[dict]:
    """JSON rows with a ``prompt`` (text or chat messages) and a ``response`` string.

    Raises:
        DataValidationError: naming the file and line of the first row that lacks either.
    """
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataValidationError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("response"), str) or "prompt" not in row:
            raise DataValidationError(f"{path}:{number}: each row needs 'prompt' and a 'response' string")
        rows.append(row)
    return rows


def judge_rows(rows: list[dict], judge: Judge) -> list[dict]:
    """The same rows, in order, each with ``refusal`` (the verdict) and ``score`` added."""
    scores = judge.score([prompt_text(r["prompt"]) for r in rows], [r["response"] for r in rows])
    return [{**row, "refusal": bool(score >= judge.threshold), "score": round(float(score), 6)}
            for row, score in zip(rows, scores)]
