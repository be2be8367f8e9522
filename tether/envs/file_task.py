"""A small file-system task: count the lines mentioning a word across a few generated log files
and write the number to ``answer.txt``. Files are drawn from the task's ``seed`` (and the
environment's): the same seed gives the same tree, so an episode replays exactly.

Task rows: ``{"seed": int}`` (optionally ``"word"``). The reward is 1 when ``answer.txt`` holds
the right count and no log file was changed or deleted, else 0.
"""

from __future__ import annotations

import random
from typing import Any

from tether.data.records import Message
from tether.envs.base import Environment
from tether.envs.files import TOOL_HELP, FileTree

WORDS = ("error", "warning", "timeout")
FILLER = ("started", "ok", "done", "retry", "connected", "closed", "idle")


def make_logs(seed: int, word: str) -> tuple[dict[str, str], int]:
    """Three log files with some lines naming ``word``; the number of those lines."""
    rng = random.Random(seed)
    files, count = {}, 0
    for index in range(3):
        lines = []
        for line in range(rng.randint(3, 8)):
            hit = rng.random() < 0.35
            count += hit
            lines.append(f"{line:03d} {word if hit else rng.choice(FILLER)} {rng.randint(0, 999)}")
        files[f"logs/app{index}.log"] = "\n".join(lines) + "\n"
    return files, count


class FileCountEnv(Environment):
    name = "file_count"
    tool_help = TOOL_HELP

    def start(self, task: dict[str, Any]) -> list[Message]:
        seed = int(task.get("seed", 0)) * 1_000_003 + self.seed
        self.word = task.get("word") or WORDS[seed % len(WORDS)]
        self.logs, self.count = make_logs(seed, self.word)
        self.tree = FileTree(self.logs)
        return [{"role": "user", "content":
                 f"Count the lines that contain the word '{self.word}' in all files under logs/ and "
                 "write just the number to answer.txt. Do not change the log files."}]

    def tools(self) -> dict[str, Any]:
        return self.tree.tools()

    def final_reward(self, text: str) -> float:
        untouched = all(self.tree.files.get(path) == content for path, content in self.logs.items())
        written = self.tree.files.get("answer.txt", "").strip()
        return float(untouched and written == str(self.count))
