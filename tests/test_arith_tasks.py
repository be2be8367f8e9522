import json
from pathlib import Path

import pytest

from tether.data import load_records
from tether.rewards.format import think_answer_format_reward
from tether.rewards.math import math_answer_reward
from tether.tasks.arithmetic import worked_answer, write_splits


def test_splits_are_disjoint_correct_and_loadable(tmp_path):
    paths = write_splits(tmp_path, train=300, heldout=50, sft=20, seed=3)
    questions = {}
    for name in ("train", "heldout"):
        records = load_records(str(paths[name]), "verifiable")
        questions[name] = {r.prompt[-1]["content"] for r in records}
        for record in records:
            a, op, b = record.prompt[-1]["content"].removeprefix("What is ").removesuffix("?").split()
            assert int(record.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    sft = load_records(str(paths["sft"]), "sft")
    questions["sft"] = {r.messages[1]["content"] for r in sft}
    assert len(questions["train"]) == 300 and len(questions["heldout"]) == 50 and len(questions["sft"]) == 20
    assert not questions["train"] & questions["heldout"]
    assert not questions["sft"] & (questions["train"] | questions["heldout"])


def test_worked_answers_earn_full_reward(tmp_path):
    paths = write_splits(tmp_path, train=10, heldout=10, sft=5, seed=0)
    tasks = [json.loads(line) for line in paths["heldout"].read_text().splitlines()]
    answers = [worked_answer(task) for task in tasks]
    assert answers[0].startswith("<think>") and answers[0].endswith(f"<answer>{tasks[0]['answer']}</answer>")
    assert think_answer_format_reward(None, answers) == [1.0] * 10
    assert math_answer_reward(None, answers, answer=[t["answer"] for t in tasks]) == [1.0] * 10
    wrong = [a.replace(f"<answer>{t['answer']}<", "<answer>-1<") for a, t in zip(answers, tasks)]
    assert math_answer_reward(None, wrong, answer=[t["answer"] for t in tasks]) == [0.0] * 10


def test_validation_split_is_disjoint_and_the_bundled_sets_regenerate(tmp_path):
    from tether.tasks.arithmetic import BUNDLED

    resources = Path(__file__).parent.parent / "tether" / "resources"
    for folder, sizes in BUNDLED.items():  # the generator still writes exactly the committed files
        paths = write_splits(tmp_path / folder, **sizes)
        for name, path in paths.items():
            assert path.read_text() == (resources / folder / f"{name}.jsonl").read_text(), (folder, name)
    rl = {name: [json.loads(line) for line in path.read_text().splitlines()]
          for name, path in write_splits(tmp_path / "again", **BUNDLED["arith_rl"]).items()}
    questions = {name: {row["prompt"][-1]["content"] for row in rows} for name, rows in rl.items() if name != "sft"}
    questions["sft"] = {row["messages"][1]["content"] for row in rl["sft"]}
    names = list(questions)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert not questions[first] & questions[second], (first, second)
    assert len(questions["heldout"]) == 300 and len(questions["validation"]) == 150
    # a larger held-out set starts with the smaller one's tasks (the same seed, drawn first)
    old = (resources / "arith" / "heldout.jsonl").read_text().splitlines()
    assert (resources / "arith_rl" / "heldout.jsonl").read_text().splitlines()[:100] == old
    assert sum(row["kind"] == "multiply" for row in rl["heldout"]) == 100


def test_an_exhausted_question_space_raises_instead_of_looping():
    from tether.tasks.arithmetic import make_tasks

    assert len(make_tasks(784, seed=0, operations=("multiply",))) == 784  # the whole space: 98 x 8
    with pytest.raises(ValueError, match="multiply"):
        make_tasks(785, seed=0, operations=("multiply",))


def test_the_reasoning_recipe_trains_on_measured_frontier_tasks_disjoint_from_held_out():
    from tether.algorithms.grpo import GRPOConfig
    from tether.config import load_config
    from tether.demos.arith import RECIPES

    config = load_config(GRPOConfig, RECIPES / "arith-grpo.yaml", ["train.bf16=false"])
    folder = Path(__file__).parent.parent / "tether" / "resources" / "arith_rl"
    assert config.data.train.endswith("arith_rl/frontier.jsonl") and config.data.eval.endswith("arith_rl/heldout.jsonl")
    rows = {name: [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "frontier", "heldout", "validation")}
    rates = [json.loads(line) for line in (folder / "frontier.rates.jsonl").read_text().splitlines()]
    # the kept rows are exactly the measured training tasks with 0 < pass rate < 1, unchanged and in order
    measured = {row["id"]: row for row in rows["train"][:len(rates)]}
    assert [r["id"] for r in rates] == list(measured)
    assert rows["frontier"] == [measured[r["id"]] for r in rates if 0.0 < r["pass_rate"] < 1.0]
    assert all(r["pass_rate"] * 8 == int(r["pass_rate"] * 8) for r in rates)  # shares of 8 samples
    trained = {row["prompt"][-1]["content"] for row in rows["frontier"]}
    for name in ("heldout", "validation"):
        assert not trained & {row["prompt"][-1]["content"] for row in rows[name]}
