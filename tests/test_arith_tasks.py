import json

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
