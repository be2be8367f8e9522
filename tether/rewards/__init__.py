"""Reward functions for RL with verifiable rewards, all with TRL's signature
``reward(prompts, completions, **dataset_columns) -> list[float | None]``."""

from tether.rewards.base import RewardError, RewardSpec, combine_rewards
from tether.rewards.code import code_test_reward, extract_code, make_code_test_reward
from tether.rewards.format import extract_answer, think_answer_format_reward
from tether.rewards.math import extract_final_answer, math_answer_reward
from tether.rewards.sandbox import SandboxError, SandboxResult, SandboxUnavailable, run_python

__all__ = [
    "RewardError", "RewardSpec", "combine_rewards",
    "code_test_reward", "extract_code", "make_code_test_reward",
    "extract_answer", "think_answer_format_reward",
    "extract_final_answer", "math_answer_reward",
    "SandboxError", "SandboxResult", "SandboxUnavailable", "run_python",
]
