"""Tool calls in a model's text.

SmolLM2's chat template (the default model) has no tool-call format: it renders any role as
ChatML and ignores ``tools``. So tether uses one documented JSON form, the one Hermes and Qwen2.5
templates emit, which also covers tokenizers whose template has that format:

    <tool_call>
    {"name": "python", "arguments": {"code": "print(17 * 23)"}}
    </tool_call>

Several calls may follow each other in one turn. A call whose JSON does not parse, or lacks a
``name``, becomes a call to the tool ``invalid`` (the environment answers with an error), so a
malformed attempt is still visible in the trajectory. A closing tag cut off by the end of the
turn is accepted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def parse_tool_calls(text: str) -> list[ToolCall]:
    calls = []
    for match in _CALL.finditer(text):
        body = match.group(1).strip()
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError:
            calls.append(ToolCall("invalid", {"text": body}))
            continue
        if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
            calls.append(ToolCall("invalid", {"text": body}))
            continue
        arguments = parsed.get("arguments", {})
        calls.append(ToolCall(parsed["name"], arguments if isinstance(arguments, dict) else {"value": arguments}))
    return calls


def format_tool_call(name: str, **arguments: Any) -> str:
    """The text of one call, as a model should write it (scripted policies and SFT data use this)."""
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments})}\n{CLOSE}"
