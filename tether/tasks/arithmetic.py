"""Arithmetic tasks with exact answers, for RL with verifiable rewards.

Each task is a verifiable record ``{"id", "prompt", "answer", "kind"}``. The prompt asks for
``<think>...</think><answer>...</answer>`` output. Train and held-out sets come from
different seeds and share no question.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM_PROMPT = (
    "You are a careful calculator. Think briefly inside <think> </think>, then give only the "
    "final number inside <answer> </answer>. Example: <think>12 + 7 = 19</think><answer>19</answer>"
)
OPERATIONS = ("add", "subtract", "multiply")


def arithmetic_task(rng: random.Random, operation: str, max_operand: int = 99) -> tuple[str, int]:
    a, b = rng.randint(2, max_operand), rng.randint(2, max_operand)
    if operation == "add":
        return f"What is {a} + {b}?", a + b
    if operation == "subtract":
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", a - b
    if operation == "multiply":
        b = rng.randint(2, 9)  # one factor small: hard enough for a 135M model, not hopeless
        return f"What is {a} * {b}?", a * b
    raise ValueError(f"unknown operation {operation!r}; expected one of {', '.join(OPERATIONS)}")


def make_tasks(count: int, *, seed: int, operations: tuple[str, ...] = OPERATIONS,
               max_operand: int = 99, exclude: set[str] = frozenset()) -> list[dict]:
    """``count`` distinct arithmetic tasks, none of whose questions is in ``exclude``."""
    rng = random.Random(seed)
    tasks, seen, misses = [], set(exclude), 0
    while len(tasks) < count:
        operation = operations[len(tasks) % len(operations)]
        question, answer = arithmetic_task(rng, operation, max_operand)
        if question in seen:
            misses += 1
            if misses > 100_000:  # the operation's question space is used up: fail instead of looping forever
                raise ValueError(f"not enough distinct {operation} questions left for {count} tasks")
            continue
        misses = 0
        seen.add(question)
        tasks.append({"id": f"{operation}-{seed}-{len(tasks):05d}",
                      "prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                                 {"role": "user", "content": question}],
                      "answer": str(answer), "kind": operation})
    return tasks


def worked_answer(task: dict) -> str:
    """The target format, e.g. ``<think>81 + 34 = 115</think><answer>115</answer>``."""
    question = task["prompt"][-1]["content"].removeprefix("What is ").removesuffix("?")
    return f"<think>{question} = {task['answer']}</think><answer>{task['answer']}</answer>"


def write_splits(directory: str | Path, *, train: int = 2000, heldout: int = 100, sft: int = 64,
                 validation: int = 0, seed: int = 0, operations: tuple[str, ...] = OPERATIONS,
                 max_operand: int = 99) -> dict[str, Path]:
    """``train.jsonl`` and ``heldout.jsonl`` tasks, ``sft.jsonl``: worked answers that teach the
    output format before RL, and with ``validation`` > 0 ``validation.jsonl``: tasks from the
    training distribution to choose a recipe on, so the held-out set is only read to report.
    No question appears in two files.

    Each split has its own seed (held-out ``seed + 1``, warm-up ``seed + 2``, validation
    ``seed + 3``, train ``seed``) and is drawn after the ones listed before it, so a larger held-out
    set starts with the smaller one's tasks. The multiply space is small (98 x 8 = 784 questions):
    the splits' multiply thirds together must fit in it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    held = make_tasks(heldout, seed=seed + 1, operations=operations, max_operand=max_operand)
    seen = {task["prompt"][-1]["content"] for task in held}
    warmup = make_tasks(sft, seed=seed + 2, operations=operations, max_operand=max_operand, exclude=seen)
    seen |= {task["prompt"][-1]["content"] for task in warmup}
    checked = make_tasks(validation, seed=seed + 3, operations=operations, max_operand=max_operand, exclude=seen)
    seen |= {task["prompt"][-1]["content"] for task in checked}
    trained = make_tasks(train, seed=seed, operations=operations, max_operand=max_operand, exclude=seen)
    sft_rows = [{"id": task["id"], "messages": task["prompt"] + [
        {"role": "assistant", "content": worked_answer(task)}]} for task in warmup]
    splits = {"train": trained, "heldout": held, "sft": sft_rows}
    if validation:
        splits["validation"] = checked
    paths = {name: directory / f"{name}.jsonl" for name in splits}
    for name, rows in splits.items():
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


# The bundled task sets: arith/ (100 held out; also read by arith-tools, poison-grpo and the fragility
# resources) and arith_rl/ (300 held out, +-5 pp, and a validation slice: the reasoning-RL demo's).
BUNDLED = {"arith": {"train": 2000, "heldout": 100, "sft": 64},
           "arith_rl": {"train": 1500, "heldout": 300, "sft": 64, "validation": 150}}

if __name__ == "__main__":  # regenerate the bundled task files
    for folder, sizes in BUNDLED.items():
        write_splits(Path(__file__).parent.parent / "resources" / folder, **sizes)
