"""Code reward: run the completion's program followed by the sample's tests, in the sandbox.

The tests' asserts are judged outside the program (``code_harness``): ending the program early,
hooking its exit, or returning objects that compare equal to anything all score 0.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from tether.rewards.base import completion_text
from tether.rewards.code_harness import build_harness, judge
from tether.rewards.format import extract_answer
from tether.rewards.sandbox import Isolation, SandboxError, run_python

logger = logging.getLogger(__name__)

_PYTHON_BLOCK = re.compile(r"```(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_ANY_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The last ```python block (the final solution, after any drafts), else the last fenced
    block of any language, else the ``<answer>`` content; None when there is none."""
    for pattern in (_PYTHON_BLOCK, _ANY_BLOCK):
        blocks = pattern.findall(completion)
        if blocks:
            return blocks[-1]
    answer = extract_answer(completion)
    if answer is not None:
        blocks = _ANY_BLOCK.findall(answer + "\n")
        return blocks[-1] if blocks else answer
    return None


def make_code_test_reward(*, timeout_s: float = 5.0, memory_mb: int = 256,
                          isolation: Isolation = "namespaces") -> Callable[..., list[float | None]]:
    """A ``code_test_reward`` with other sandbox limits (per program, tests included).

    ``isolation="rlimits-only"`` is the weaker sandbox, for machines without namespaces; with the
    default, such a machine raises ``SandboxUnavailable`` instead of scoring. Each call logs the
    isolation its programs ran under.
    """

    def code_test_reward(prompts: Sequence[Any], completions: Sequence[Any],
                         tests: Sequence[str | Sequence[str] | None], **_columns: Any
                         ) -> list[float | None]:
        """1.0 when the completion's code followed by the sample's ``tests`` runs to the end
        with every ``assert`` holding (judged outside the program) and exits 0, else 0.0.

        ``tests`` holds one entry per sample: Python source (typically ``assert`` lines) or a
        list of such lines. An empty or None entry scores None: the reward does not apply.
        A completion without code scores 0.0.
        """
        scores: list[float | None] = []
        ran_under: set[tuple[str, ...]] = set()
        for completion, sample_tests in zip(completions, tests, strict=True):
            if not isinstance(sample_tests, str) and sample_tests is not None:
                sample_tests = "\n".join(sample_tests)
            if not sample_tests or not sample_tests.strip():
                scores.append(None)
                continue
            code = extract_code(completion_text(completion))
            if code is None:
                scores.append(0.0)
                continue
            program, checks = build_harness(code, sample_tests)
            result = run_python(program, timeout_s=timeout_s, memory_mb=memory_mb,
                                with_report=True, isolation=isolation)
            _check_isolation(result.isolation_level, result.isolation, isolation)
            ran_under.add(result.isolation)
            passed = result.status == "ok" and judge(result.report, checks)[0]
            scores.append(1.0 if passed else 0.0)
        for features in ran_under:
            logger.log(logging.WARNING if isolation != "namespaces" else logging.INFO,
                       "code_test_reward: programs ran under isolation %r (%s)", isolation,
                       ", ".join(features))
        return scores

    return code_test_reward


def _check_isolation(level: str, features: tuple[str, ...], wanted: Isolation) -> None:
    """A score is only as good as the sandbox it came from: refuse one from a weaker run."""
    if level != wanted or (wanted == "namespaces" and not {"netns", "mountns"} <= set(features)):
        raise SandboxError(f"asked for isolation {wanted!r}, the program ran under {level!r} "
                           f"({', '.join(features)})")


code_test_reward = make_code_test_reward()
code_test_reward_rlimits_only = make_code_test_reward(isolation="rlimits-only")
"""For machines without namespaces, chosen by name (``code_tests_rlimits_only``): weaker."""
