"""The environment API: an episode is ``reset(task)`` then ``step(action)`` until ``done``.

    observation = env.reset(task)            # the conversation the model starts from (messages)
    result = env.step(model_text)            # tools run, rewards given
    result.observation                       # tool output shown to the model next (a message), or None
    result.reward, result.done, result.info  # info: tool calls made, files touched, ...

An action is the model's whole turn (text). A turn with tool calls gets their output back as one
``tool`` message; a turn without any ends the episode (the model's final answer), as does reaching
``max_turns`` model turns or ``max_tool_calls`` calls. Environments are deterministic given the task
and ``seed``: they hold no other randomness, and tools run in the sandbox from a state the
environment keeps (files are written into the sandbox for each call and read back after it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tether.data.records import Message
from tether.envs.tool_calls import ToolCall, parse_tool_calls


@dataclass
class StepResult:
    observation: Message | None  # the tool message the model sees next; None when done
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


class Environment:
    """A tool-using episode. Subclasses give ``start(task) -> messages``, ``tools`` (name -> function
    of the call's arguments returning text) and ``final_reward(text)``; this class runs the turns.

    The step loop: parse the turn's tool calls; none -> done, reward = ``final_reward(text)``; else
    run each (at most ``max_tool_calls`` in the episode; unknown tools and bad arguments answer
    with an error text rather than raising) and show their outputs in one tool message.
    """

    name = "environment"
    tool_help = ""  # how to call the tools, appended to the system prompt

    def __init__(self, *, max_turns: int = 4, max_tool_calls: int = 8, seed: int = 0):
        self.max_turns, self.max_tool_calls, self.seed = max_turns, max_tool_calls, seed
        self.turns = self.calls = 0
        self.events: list[dict[str, Any]] = []  # every tool call and its output, for detectors

    # ---- to be given by subclasses -------------------------------------------------------
    def start(self, task: dict[str, Any]) -> list[Message]:
        raise NotImplementedError

    def tools(self) -> dict[str, Any]:
        return {}

    def final_reward(self, text: str) -> float:
        return 0.0

    # ---- the API ------------------------------------------------------------------------
    def reset(self, task: dict[str, Any]) -> list[Message]:
        self.task, self.turns, self.calls, self.events = task, 0, 0, []
        self.final_text: str | None = None
        return with_tool_help(self.start(task), self.tool_help)

    def step(self, action: str) -> StepResult:
        self.turns += 1
        calls = parse_tool_calls(action)
        if not calls:
            self.final_text = action
            return StepResult(None, self.final_reward(action), True, {"tool_calls": 0})
        outputs = []
        for call in calls:
            if self.calls >= self.max_tool_calls:
                outputs.append("error: tool call limit reached")
                break
            self.calls += 1
            output = self.run_tool(call)
            self.events.append({"turn": self.turns, "tool": call.name, "arguments": call.arguments,
                                "output": output})
            outputs.append(output)
        info = {"tool_calls": len(outputs)}
        if self.turns >= self.max_turns or self.calls >= self.max_tool_calls:
            # Out of turns or calls: the episode ends on this turn, scored as it stands.
            self.final_text = action
            return StepResult(None, self.final_reward(action), True, {**info, "truncated": True})
        content = "\n".join(f"<tool_response>\n{out}\n</tool_response>" for out in outputs)
        return StepResult({"role": "tool", "content": content}, 0.0, False, info)

    def run_tool(self, call: ToolCall) -> str:
        tool = self.tools().get(call.name)
        if tool is None:
            return f"error: unknown tool {call.name!r}; tools: {', '.join(sorted(self.tools()))}"
        try:
            return str(tool(**call.arguments))
        except TypeError as error:  # wrong or missing arguments
            return f"error: {error}"


def with_tool_help(messages: list[Message], help_text: str) -> list[Message]:
    """The task's messages with the tool instructions added to the system message (made if absent)."""
    if not help_text:
        return list(messages)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + help_text}, *messages[1:]]
    return [{"role": "system", "content": help_text}, *messages]
