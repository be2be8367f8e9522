"""Reward functions: combining with weights, failures that name the sample, math, format, code."""

from __future__ import annotations

import logging
import math
import threading

import pytest

from tether.errors import ConfigError
from tether.rewards import (
    RewardError,
    RewardSpec,
    code_test_reward,
    combine_rewards,
    extract_answer,
    extract_code,
    extract_final_answer,
    make_code_test_reward,
    math_answer_reward,
    think_answer_format_reward,
)

# ---------------------------------------------------------------- combine_rewards


def length_reward(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def only_even_reward(prompts, completions, index, **_):
    return [1.0 if i % 2 == 0 else None for i in index]


def test_weighted_sum_with_none_as_zero_and_metrics():
    completions = ["a", "bbb", "cc"]
    totals, per_reward, metrics = combine_rewards(
        [RewardSpec("length", length_reward, weight=0.5), RewardSpec("even", only_even_reward, 2.0)],
        prompts=["p0", "p1", "p2"], completions=completions, columns={"index": [0, 1, 2]})
    # 0.5·len + 2·(1 | None→0): [0.5+2, 1.5+0, 1+2]
    assert totals == [2.5, 1.5, 3.0]
    assert per_reward == {"length": [1.0, 3.0, 2.0], "even": [1.0, None, 1.0]}
    assert metrics["rewards/length/mean"] == 2.0
    assert metrics["rewards/length/std"] == 1.0  # sqrt(((1-2)² + (3-2)² + 0) / (3-1))
    assert metrics["rewards/even/mean"] == 1.0  # None is left out of the mean
    assert metrics["rewards/even/std"] == 0.0
    assert metrics["rewards/total/mean"] == pytest.approx(7 / 3)
    assert metrics["rewards/total/std"] == pytest.approx(math.sqrt(((1 / 6) ** 2 + (5 / 6) ** 2 + (2 / 3) ** 2) / 2))
    assert "rewards/length/failed" not in metrics


def test_numpy_outputs_are_accepted():
    import numpy as np

    totals, per_reward, _ = combine_rewards(
        [RewardSpec("np", lambda p, c, **_: np.array([0.25, 1.0], dtype=np.float32))], ["p"] * 2, ["a", "b"])
    assert totals == [0.25, 1.0] and per_reward == {"np": [0.25, 1.0]}


def test_a_reward_that_never_applies_has_nan_mean():
    _, per_reward, metrics = combine_rewards(
        [RewardSpec("none", lambda p, c, **_: [None] * len(c))], ["p"], ["c"])
    assert per_reward == {"none": [None]}
    assert math.isnan(metrics["rewards/none/mean"]) and math.isnan(metrics["rewards/none/std"])


def fails_on_sample_1(prompts, completions, **_):
    for completion in completions:
        if completion.startswith("bad"):
            raise ValueError("cannot score this")
    return [1.0] * len(completions)


def test_failure_names_reward_sample_prompt_completion_and_cause():
    long_completion = "bad" + "x" * 1000 + "THE-END"
    with pytest.raises(RewardError) as caught:
        combine_rewards([RewardSpec("picky", fails_on_sample_1)],
                        prompts=["first prompt", "What is 2+2?", "third"],
                        completions=["ok", long_completion, "ok"])
    message = str(caught.value)
    assert caught.value.index == 1 and caught.value.reward == "picky"
    assert "reward 'picky' failed on sample 1: ValueError: cannot score this" in message
    assert "'What is 2+2?'" in message
    assert "badxxx" in message and "THE-END" in message  # both ends of the completion ...
    assert "[... 610 chars cut ...]" in message  # ... but not the middle: 1010 - 2·200
    assert len(message) < 700
    assert isinstance(caught.value.__cause__, ValueError)


def test_score_failed_gives_failed_score_and_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="tether.rewards.base"):
        totals, per_reward, metrics = combine_rewards(
            [RewardSpec("picky", fails_on_sample_1), RewardSpec("length", length_reward)],
            prompts=["p"] * 4, completions=["ok", "bad1", "bad2", "fine"],
            on_error="score_failed", failed_score=-1.0)
    assert per_reward["picky"] == [1.0, -1.0, -1.0, 1.0]
    assert totals == [3.0, 3.0, 3.0, 5.0]
    assert metrics["rewards/picky/failed"] == 2.0
    assert metrics["rewards/length/failed"] == 0.0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert warnings[0].startswith("reward 'picky' failed on 2 of 4 samples, scored -1.0")


@pytest.mark.parametrize("bad_reward, problem", [
    (lambda p, c, **_: [1.0] * (len(c) - 1), "returned 2 values for 3 completions"),
    (lambda p, c, **_: 1.0, "returned a float for 3 completions"),
])
def test_wrong_number_of_values_is_a_reward_error(bad_reward, problem):
    with pytest.raises(RewardError, match=problem):
        combine_rewards([RewardSpec("broken", bad_reward)], ["p"] * 3, ["c"] * 3)


@pytest.mark.parametrize("value, problem", [
    ("1.0", "returned str '1.0', not a number or None"),
    (float("nan"), "returned nan; rewards must be finite"),
])
def test_a_value_that_is_not_a_finite_number_is_a_reward_error(value, problem):
    def reward(prompts, completions, **_):
        return [0.0, value, 0.0]

    with pytest.raises(RewardError, match="failed on sample 1: " + problem):
        combine_rewards([RewardSpec("typed", reward)], ["p"] * 3, ["c"] * 3)
    _, per_reward, metrics = combine_rewards([RewardSpec("typed", reward)], ["p"] * 3, ["c"] * 3,
                                             on_error="score_failed")
    assert per_reward["typed"] == [0.0, 0.0, 0.0] and metrics["rewards/typed/failed"] == 1.0


def test_a_reward_that_fails_only_on_the_whole_batch_says_so():
    def batch_of_two_only(prompts, completions, **_):
        if len(completions) == 2:
            raise RuntimeError("batch assumption")
        return [1.0] * len(completions)

    with pytest.raises(RewardError, match="failed on the batch but on no single sample: "
                                          "RuntimeError: batch assumption"):
        combine_rewards([RewardSpec("batchy", batch_of_two_only)], ["p"] * 2, ["c"] * 2)


def test_bad_specs_and_columns_are_config_errors():
    spec = RewardSpec("length", length_reward)
    with pytest.raises(ConfigError, match="unique"):
        combine_rewards([spec, spec], ["p"], ["c"])
    with pytest.raises(ConfigError, match="column 'answer' has 2 values for 1 completions"):
        combine_rewards([spec], ["p"], ["c"], {"answer": ["1", "2"]})


# ---------------------------------------------------------------- format


@pytest.mark.parametrize("completion, expected", [
    ("<think>2+2 is 4</think><answer>4</answer>", 1.0),
    ("<think>\nreasoning\n</think>\n\n<answer> 4 </answer>\n", 1.0),
    ("<think></think><answer>4</answer>", 1.0),  # an empty think block is still the format
    ("<think>x</think><answer>  </answer>", 0.0),  # a blank answer is not
    ("<think>x</think><answer>4</answer> and more", 0.0),
    ("Sure! <think>x</think><answer>4</answer>", 0.0),
    ("<answer>4</answer><think>x</think>", 0.0),
    ("<think>x</think>", 0.0),
    ("<think>x</think><answer>4</answer><answer>5</answer>", 0.0),
    ("<think>x<think>y</think><answer>4</answer>", 0.0),
    ("<think>x</think><answer>4", 0.0),
])
def test_think_answer_format_reward(completion, expected):
    assert think_answer_format_reward(["p"], [completion]) == [expected]


@pytest.mark.parametrize("text, expected", [
    ("<think>t</think><answer> 42 </answer>", "42"),
    ("<answer>draft</answer> then <answer>final</answer>", "final"),
    ("<answer>\n</answer>", None),
    ("<answer>truncated", None),
    ("no tags", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# ---------------------------------------------------------------- math


@pytest.mark.parametrize("text, expected", [
    ("<answer>7</answer> though \\boxed{8} and 9", "7"),
    ("so \\boxed{\\frac{1}{2}} since 3", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),
    ("we get 12 apples, costing 1,000.50 dollars", "1,000.50"),
    ("half is 1/2", "1/2"),
    ("temperature -3", "-3"),
    ("no numbers here", None),
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


MATH_CASES = [  # (completion, gold, reward)
    ("<answer>0.5</answer>", "1/2", 1.0),
    ("<answer>1/2</answer>", "0.5", 1.0),
    ("The answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
    ("<answer>\\dfrac{2}{4}</answer>", "\\frac{1}{2}", 1.0),
    ("<answer>x=3</answer>", "3", 1.0),
    ("<answer>3</answer>", "x = 3", 1.0),
    ("so the total is 1,000", "1000", 1.0),
    ("<answer>1000</answer>", "1,000", 1.0),
    ("<answer>$\\sqrt{2}$</answer>", "2^{1/2}", 1.0),
    ("<answer>42.</answer>", "42", 1.0),
    ("<answer>0.51</answer>", "1/2", 0.0),
    ("<answer>x=4</answer>", "3", 0.0),
    ("I do not know", "3", 0.0),
]


def test_math_answer_reward_equivalences():
    completions, gold, expected = zip(*MATH_CASES)
    assert math_answer_reward([None] * len(gold), list(completions), answer=list(gold)) == list(expected)


def test_math_answer_reward_from_a_worker_thread():
    # math-verify's signal.alarm timeouts raise ValueError outside the main thread unless turned off
    completions, gold, expected = zip(*MATH_CASES[:6])
    results, errors = [], []

    def work():
        try:
            results.append(math_answer_reward([None] * 6, list(completions), answer=list(gold)))
        except Exception as error:  # noqa: BLE001 — surfaced by the assert below
            errors.append(error)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert errors == [] and results == [list(expected)]


def test_math_answer_reward_gold_none_and_unreadable_gold():
    assert math_answer_reward(["p", "p"], ["<answer>1</answer>", "<answer>1</answer>"],
                              answer=[None, "1"]) == [None, 1.0]
    with pytest.raises(RewardError, match="sample 1: ValueError: math-verify cannot parse the gold"):
        combine_rewards([RewardSpec("math", math_answer_reward)], ["p", "q"],
                        ["<answer>1</answer>", "<answer>2</answer>"], {"answer": ["1", ""]})


def test_math_answer_reward_scores_an_oversized_answer_zero_without_parsing():
    huge = "1" + "0" * 1000  # 1001 chars: equal to the gold, but past MAX_ANSWER_CHARS
    assert math_answer_reward(["p"], [f"<answer>{huge}</answer>"], answer=[huge]) == [0.0]


# ---------------------------------------------------------------- code


def _no_namespaces() -> str | None:
    from tether.rewards.sandbox import _support

    return _support().unavailable


def _code_reward(**limits):
    """The code reward under the strongest sandbox this machine has, so the cheat tests also run
    where there are no namespaces (``code_test_reward`` itself would refuse to run there)."""
    return make_code_test_reward(isolation="rlimits-only" if _no_namespaces() else "namespaces",
                                 **limits)


def test_extract_code_prefers_the_last_python_block():
    completion = ("Draft:\n```python\ndef f(): return 0\n```\nFinal:\n```python\ndef f(): return 1\n```\n"
                  "Usage:\n```\nf()\n```")
    assert extract_code(completion) == "def f(): return 1\n"
    assert extract_code("<answer>def f(): return 2</answer>") == "def f(): return 2"
    assert extract_code("<answer>```py\nx = 1\n```</answer>") == "x = 1\n"
    assert extract_code("no code at all") is None


def test_code_test_reward_runs_the_tests_against_the_code():
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    completions = [
        "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```",
        "```python\ndef add(a, b):\n    return a - b\n```",  # wrong answer
        "```python\ndef add(a, b) return a + b\n```",  # syntax error
        "I cannot write code.",
        "```python\ndef add(a, b):\n    return a + b\n```",  # this sample has no tests
    ]
    scores = _code_reward()(["p"] * 5, completions, tests=[tests, tests, tests, tests, None])
    assert scores == [1.0, 0.0, 0.0, 0.0, None]


def test_code_test_reward_tests_as_a_list_and_a_hanging_solution():
    reward = _code_reward(timeout_s=1.0)
    completions = ["<answer>def sq(x):\n    return x * x</answer>",
                   "```python\ndef sq(x):\n    while True:\n        pass\n```"]
    tests = [["assert sq(3) == 9", "assert sq(-2) == 4"], ["assert sq(3) == 9"]]
    assert reward(["p", "p"], completions, tests=tests) == [1.0, 0.0]


_WRONG_ADD = "def add(a, b):\n    return a - b\n"
_CHEATS = {
    "exit": "exit()",
    "sys_exit": "import sys\nsys.exit(0)",
    "os_exit": "import os\nos._exit(0)",
    "atexit_os_exit": "import atexit, os\natexit.register(os._exit, 0)",
    "excepthook_exits_0": ("import os, sys\n"
                           "sys.excepthook = lambda *args: os._exit(0)"),
    "eq_always_true": ("class Anything:\n    def __eq__(self, other):\n        return True\n"
                       "    __ne__ = lambda self, other: False\n"
                       "def add(a, b):\n    return Anything()"),
    "int_subclass_eq_always_true": ("class Liar(int):\n    def __eq__(self, other):\n"
                                    "        return True\n"
                                    "def add(a, b):\n    return Liar(0)"),
    "forged_report": ("import os, sys\n"
                      "fd = sys.modules['__main__'].__report_fd__\n"
                      "os.write(fd, b\"[0, [['int', '0']]]\\n[1, [['int', '0']]]\\n['end']\\n\")\n"
                      "os._exit(0)"),
}


@pytest.mark.parametrize("cheat", list(_CHEATS), ids=list(_CHEATS))
def test_code_test_reward_cannot_be_cheated(cheat):
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    honest = f"```python\n{_WRONG_ADD.replace('a - b', 'a + b')}```"
    cheating = f"```python\n{_WRONG_ADD}{_CHEATS[cheat]}\n```"
    assert _code_reward()(["p", "p"], [honest, cheating], tests=[tests, tests]) == [1.0, 0.0]


def test_code_test_reward_judges_asserts_of_every_shape_outside_the_program():
    code = "```python\ndef double(x):\n    return 2 * x\n```"
    passing = ["x = double(4)\nassert x == 8",
               "for i in range(3):\n    assert double(i) == 2 * i, 'message'",
               "assert double(1) and not double(0)",
               "assert 0 < double(3) <= 6",
               "assert double(0.5) == 1.0 and double(1) != 3",
               "assert double([1]) == [1, 1] and double('ab') in {'abab', 'x'}",
               "assert double(1) is not None",
               "class Case:\n    x = double(2)\n    assert x == 4",  # class scope
               "x = [1]\ny = x\nassert y is x and double(x) is not x"]  # identity
    failing = ["assert double(2) == 5", "assert double(3) > 6", "assert not double(1)",
               "for i in range(3):\n    assert double(i) == i",
               "assert double('a') < 3",  # TypeError in Python: the assert fails
               "assert double(2) == 4\nraise SystemExit(0)",  # the tests must run to the end
               "x = [1]\nassert double(x) is x"]
    scores = _code_reward()(["p"] * (len(passing) + len(failing)),
                              [code] * (len(passing) + len(failing)), tests=passing + failing)
    assert scores == [1.0] * len(passing) + [0.0] * len(failing)


def test_code_harness_refuses_records_that_were_not_earned():
    from tether.rewards.code_harness import build_harness, judge

    _, checks = build_harness("", "assert f(1) == 2\nfor i in 'ab':\n    assert f(i)")
    assert judge("[0, [['int', '2']]]\n[1, [['bool', True]]]\n['end']", checks)[0]
    assert judge("[0, [['int', '2']]]\n['end']", checks)[0]  # a loop may run no times
    not_earned = {
        "no end record": "[0, [['int', '2']]]",
        "wrong value": "[0, [['int', '3']]]\n['end']",
        "top-level check twice": "[0, [['int', '2']]]\n[0, [['int', '2']]]\n['end']",
        "top-level check missing": "[1, [['bool', True]]]\n['end']",
        "unknown check": "[0, [['int', '2']]]\n[7, []]\n['end']",
        "negative check id": "[0, [['int', '2']]]\n[-1, [['bool', True]]]\n['end']",
        "int as a bool": "[0, [['int', '2']]]\n[1, [['bool', 1]]]\n['end']",
        "unknown kind": "[0, [['Anything', '2']]]\n['end']",
        "not a literal": "[0, [['int', __import__('os').getpid()]]]\n['end']",
        "nested too deep": "[0, " + "[" * 300 + "]" * 300 + "]\n['end']",
    }
    for why, report in not_earned.items():
        assert not judge(report, checks)[0], why


@pytest.mark.skipif(bool(_no_namespaces()), reason=f"no namespaces here: {_no_namespaces()}")
def test_code_test_reward_logs_the_isolation_and_refuses_a_weaker_run(monkeypatch, caplog):
    from tether.rewards import code
    from tether.rewards.resolve import resolve_reward
    from tether.rewards.sandbox import SandboxError, SandboxResult

    completion, tests = "```python\ndef one():\n    return 1\n```", "assert one() == 1"
    with caplog.at_level(logging.INFO, logger="tether.rewards.code"):
        assert code_test_reward(["p"], [completion], tests=[tests]) == [1.0]
    assert "isolation 'namespaces'" in caplog.text and "netns" in caplog.text

    caplog.clear()
    weaker = resolve_reward("code_tests_rlimits_only")  # the weaker level, asked for by name
    with caplog.at_level(logging.INFO, logger="tether.rewards.code"):
        assert weaker(["p"], [completion], tests=[tests]) == [1.0]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "isolation 'rlimits-only'" in caplog.text and "netns" not in caplog.text

    # A sandbox that ran with less than was asked for gives no score at all.
    ran_weaker = SandboxResult(status="ok", returncode=0, stdout="", stderr="", wall_s=0.1,
                               isolation=("uid", "rlimits"), report='["end"]',
                               isolation_level="rlimits-only")
    monkeypatch.setattr(code, "run_python", lambda *args, **kwargs: ran_weaker)
    with pytest.raises(SandboxError, match="asked for isolation 'namespaces'"):
        code_test_reward(["p"], [completion], tests=[tests])


def test_rewards_accept_trl_conversational_completions():
    from tether.rewards.format import think_answer_format_reward
    from tether.rewards.math import math_answer_reward

    text = "<think>2 + 2 = 4</think><answer>4</answer>"
    chat = [[{"role": "assistant", "content": text}]]
    assert math_answer_reward(None, chat, answer=["4"]) == [1.0]
    assert think_answer_format_reward(None, chat) == [1.0]
    with pytest.raises(TypeError, match="a completion must be a string or a list of messages"):
        math_answer_reward(None, [42], answer=["4"])


def trl_think_format_reward(completions, **kwargs):
    """Written for TRL's conversational datasets, unchanged: completions only, by keyword, as
    message lists."""
    return [1.0 if completion[0]["content"].startswith("<think>") else 0.0 for completion in completions]


def test_a_trl_conversational_reward_runs_unchanged_on_chat_prompts():
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    totals, per_reward, _ = combine_rewards(
        [RewardSpec("trl", trl_think_format_reward)], prompts=[chat, chat],
        completions=["<think>sum</think><answer>4</answer>", "4"])
    assert per_reward == {"trl": [1.0, 0.0]} and totals == [1.0, 0.0]


def test_completions_reach_rewards_as_text_after_text_prompts_and_as_messages_after_chat_prompts():
    seen = []

    def record(prompts, completions, **_):
        seen.extend(completions)
        return [0.0] * len(completions)

    chat = [{"role": "user", "content": "hi"}]
    combine_rewards([RewardSpec("record", record)], ["hi", chat], ["hello", "hello"])
    assert seen == ["hello", [{"role": "assistant", "content": "hello"}]]


@pytest.mark.parametrize("prompt", ["What is 2 + 2?", [{"role": "user", "content": "What is 2 + 2?"}]])
def test_built_in_rewards_score_text_and_chat_prompts_alike(prompt):
    completions = ["<think>2 + 2 = 4</think><answer>4</answer>", "<answer>5</answer>"]
    _, per_reward, _ = combine_rewards(
        [RewardSpec("math", math_answer_reward), RewardSpec("format", think_answer_format_reward)],
        [prompt, prompt], completions, {"answer": ["4", "4"]})
    assert per_reward == {"math": [1.0, 0.0], "format": [1.0, 0.0]}


def test_required_columns_follow_how_the_reward_is_called():
    from tether.rewards.base import required_columns

    def trl_style(completions, solution, **kwargs):
        return [0.0] * len(completions)

    assert required_columns(math_answer_reward) == ["answer"]
    assert required_columns(trl_style) == ["solution"]
    assert required_columns(lambda p, c, tag, **_: []) == ["tag"]
    assert required_columns(think_answer_format_reward) == []
    with pytest.raises(RewardError, match="missing .*'solution'"):
        combine_rewards([RewardSpec("trl", trl_style)], ["p"], ["c"])  # never handed prompts as completions
