"""The held-out accuracy intervals `tether demo arith` prints and writes to demo_results.json."""

import pytest

from tether.demos.arith import accuracy_intervals


def rows(right: list[bool], prefix: str = "task") -> list[dict]:
    return [{"id": f"{prefix}-{i}", "math_answer": 1.0 if ok else 0.0} for i, ok in enumerate(right)]


def stages(before: list[bool], after: list[bool]) -> dict[str, list[dict]]:
    return {"base": rows([False] * len(before)), "after_sft": rows(before), "after_grpo": rows(after)}


def test_each_accuracy_has_its_wilson_interval():
    intervals = accuracy_intervals(stages([True] * 20 + [False] * 80, [True] * 33 + [False] * 67))
    sft, grpo = intervals["after_sft"], intervals["after_grpo"]
    assert sft["value"] == 0.20 and sft["n"] == 100
    # Wilson's 95% interval for 20/100 (Newcombe 1998): 13.3% to 28.9%, not symmetric about 20%.
    assert sft["low"] == pytest.approx(0.1334, abs=1e-4) and sft["high"] == pytest.approx(0.2888, abs=1e-4)
    assert grpo["low"] < 0.33 < grpo["high"]
    assert intervals["base"]["value"] == 0.0 and intervals["base"]["low"] == 0.0 and intervals["base"]["high"] > 0


def test_the_change_is_paired_task_by_task():
    # Half the tasks right before; after GRPO the same ones plus 6 more, none lost: +6 pp.
    before = [True] * 50 + [False] * 50
    after = [True] * 56 + [False] * 44
    change = accuracy_intervals(stages(before, after))["grpo_change"]
    assert change["value"] == pytest.approx(0.06) and change["n"] == 100
    # Paired, only the 6 changed tasks vary between resamples, so 0 lies outside the interval; two
    # independent resamples (about +-14 pp here) would put 0 well inside it.
    assert 0.0 < change["low"] < 0.06 < change["high"] <= 0.13
    assert change["p_value"] < 0.05


def test_gains_and_losses_that_cancel_give_an_interval_around_zero():
    before = [True] * 10 + [False] * 10 + [True] * 30 + [False] * 50
    after = [False] * 10 + [True] * 10 + [True] * 30 + [False] * 50  # 10 tasks gained, 10 lost
    change = accuracy_intervals(stages(before, after))["grpo_change"]
    assert change["value"] == 0.0 and change["low"] < 0.0 < change["high"]
    assert change["p_value"] > 0.5


def test_answers_to_different_tasks_are_refused():
    mismatched = {"base": rows([False] * 10), "after_sft": rows([True] * 10),
                  "after_grpo": rows([True] * 10, prefix="other")}
    with pytest.raises(ValueError, match="not the same tasks"):
        accuracy_intervals(mismatched)
