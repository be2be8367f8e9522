"""The arithmetic tasks (tether/resources/arith) with a calculator tool run in the sandbox.

The reward is the task's: 1 when the final answer (``<answer>``, else the last number) equals the
gold answer (``math_answer``). The tool is optional: a model that answers straight away ends the
episode on its first turn, so the same environment measures accuracy with and without tool use.
"""

from __future__ import annotations

from typing import Any

from tether.data.records import Message
from tether.envs.base import Environment
from tether.envs.files import FileTree
from tether.envs.tool_calls import format_tool_call, parse_tool_calls
from tether.rewards.math import math_answer_reward

TOOL_HELP = """You may use a calculator tool. To call it, write exactly:
<tool_call>
{"name": "calculator", "arguments": {"expression": "12 * 7"}}
</tool_call>
You will get the result back; then give the final answer."""


class ArithmeticEnv(Environment):
    name = "arithmetic"
    tool_help = TOOL_HELP

    def start(self, task: dict[str, Any]) -> list[Message]:
        prompt = task["prompt"]
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)

    def tools(self) -> dict[str, Any]:
        return {"calculator": self.calculator, "python": self.python}

    def calculator(self, expression: str = "") -> str:
        return self.python(f"print({str(expression)!r} and eval({str(expression)!r}, {{}}))")

    def python(self, code: str = "") -> str:
        """Runs in the sandbox (an empty file tree): the output, or the error's last lines."""
        output = FileTree({}).run_python(code)
        status, _, text = output.partition("\n")
        return text if status == "[ok]" else output

    def final_reward(self, text: str) -> float:
        if parse_tool_calls(text):  # out of turns while still calling the tool: no answer given
            return 0.0
        return float(math_answer_reward([None], [text], [self.task["answer"]])[0] or 0.0)


def tool_warmup_messages(task: dict[str, Any]) -> list[Message]:
    """One worked episode for an SFT warm-up that teaches the call format: the environment's
    opening messages, a calculator call on the question, its output, the answer."""
    messages = ArithmeticEnv().reset(task)
    expression = messages[-1]["content"].removeprefix("What is ").removesuffix("?")
    return [*messages, {"role": "assistant", "content": format_tool_call("calculator", expression=expression)},
            {"role": "tool", "content": f"<tool_response>\n{task['answer']}\n</tool_response>"},
            {"role": "assistant", "content": f"<answer>{task['answer']}</answer>"}]
