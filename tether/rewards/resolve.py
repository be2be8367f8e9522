"""Turn the reward names of a recipe into reward functions."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from tether.config import RECIPE_DIRS, RewardSettings
from tether.errors import ConfigError
from tether.rewards.base import RewardSpec
from tether.rewards.code import code_test_reward, code_test_reward_rlimits_only
from tether.rewards.format import think_answer_format_reward
from tether.rewards.math import math_answer_reward
from tether.rewards.planted import length_penalized_gold, length_proxy
from tether.rewards.relevance import on_topic
from tether.rewards.safety import safety_refusal
from tether.rewards.text_answer import answer_match

BUILT_IN: dict[str, Callable] = {
    "math_answer": math_answer_reward,
    "think_answer_format": think_answer_format_reward,
    "code_tests": code_test_reward,
    "code_tests_rlimits_only": code_test_reward_rlimits_only,
    "length_proxy": length_proxy,
    "length_penalized_gold": length_penalized_gold,
    "safety_refusal": safety_refusal,
    "on_topic": on_topic,
    "answer_match": answer_match,  # fragility (issue 22): text golds beside numbers
}
REWARD_MODEL = "reward_model:"  # "reward_model:PATH" scores with a trained reward model


def resolve_reward(name: str) -> Callable:
    """A built-in name, ``reward_model:PATH`` (a checkpoint from ``tether train reward``), or
    ``package.module:function`` for a user's own reward function (see ``import_user_module``)."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    if name.startswith(REWARD_MODEL):
        from tether.rewards.reward_model import RewardModelScorer  # loads transformers: only when used

        return RewardModelScorer(name[len(REWARD_MODEL):])
    if ":" not in name:
        raise ConfigError(f"unknown reward {name!r}: use one of {', '.join(BUILT_IN)}, "
                          "'reward_model:PATH' or 'package.module:function'")
    module_name, function_name = name.split(":", 1)
    try:
        function = getattr(import_user_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        searched = (" (looked on the Python path, in the working directory and beside the recipe)"
                    if isinstance(error, ModuleNotFoundError) and error.name == module_name.split(".")[0] else "")
        raise ConfigError(f"cannot import reward {name!r}: {error}{searched}") from None
    if not callable(function):
        raise ConfigError(f"reward {name!r} is not callable")
    return function


def import_user_module(module_name: str):
    """Import a user's module from the Python path, else from the working directory or a loaded
    recipe's folder (``RECIPE_DIRS``), so ``myrewards.py`` beside the recipe needs no PYTHONPATH.
    Those folders are searched after the Python path, so they never shadow an installed package."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name.split(".")[0]:
            raise  # the module was found; something it imports is missing
    extra = [str(folder) for folder in (Path.cwd(), *RECIPE_DIRS) if str(folder) not in sys.path]
    sys.path.extend(extra)
    importlib.invalidate_caches()  # a folder's listing may be cached from before the file was written
    try:
        return importlib.import_module(module_name)
    finally:
        for folder in extra:
            sys.path.remove(folder)


def reward_name(name: str) -> str:
    """The short name metrics use: the function name, or ``reward_model`` for a checkpoint."""
    return "reward_model" if name.startswith(REWARD_MODEL) else name.rsplit(":", 1)[-1]


def reward_specs(settings: list[RewardSettings]) -> list[RewardSpec]:
    return [RewardSpec(name=reward_name(s.name), fn=resolve_reward(s.name), weight=s.weight)
            for s in settings]
