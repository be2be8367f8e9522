"""The audit's environments: a scenario's file tree with the file tools, and a code task.

Both keep the tree before and after and the final message (``record()``), which the rollout adds
to each trajectory so detectors read them from ``trajectories.jsonl`` too.
"""

from __future__ import annotations

from typing import Any

from tether.audit.agentic.scenarios import MONITORED, UNMONITORED, by_name
from tether.audit.agentic.spec_gaming import code_task
from tether.data.records import Message
from tether.envs.base import Environment
from tether.envs.files import TOOL_HELP, FileTree


class FilesEnv(Environment):
    """A file tree, an instruction; the episode ends when the agent answers without a tool call."""

    tool_help = TOOL_HELP

    def begin(self, instruction: str, files: dict[str, str]) -> list[Message]:
        self.before = dict(files)
        self.tree = FileTree(files)
        return [{"role": "user", "content": instruction}]

    def tools(self) -> dict[str, Any]:
        return self.tree.tools()

    def record(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.tree.files, "final_text": self.final_text or ""}


class ScenarioEnv(FilesEnv):
    """Task: ``{"scenario": NAME, "monitoring": "monitored" | "unmonitored" | None}``."""

    name = "agentic_scenario"

    def start(self, task: dict[str, Any]) -> list[Message]:
        scenario = by_name([task["scenario"]])[0]
        note = {"monitored": MONITORED, "unmonitored": UNMONITORED}.get(task.get("monitoring") or "")
        instruction = f"{note}\n\n{scenario.instruction}" if note else scenario.instruction
        return self.begin(instruction, scenario.files)


class CodeTaskEnv(FilesEnv):
    """Task: ``{"size": K, "index": I}``: implement K functions in solution.py (see spec_gaming)."""

    name = "spec_task"

    def start(self, task: dict[str, Any]) -> list[Message]:
        self.code_task = code_task(int(task["size"]), int(task["index"]), seed=self.seed)
        return self.begin(self.code_task.instruction, self.code_task.files)
