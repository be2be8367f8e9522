"""Environments for agents: multi-turn episodes where the model calls tools (docs/agents.md).

``base.py`` the API (``reset(task) -> observation``, ``step(action) -> StepResult``),
``tool_calls.py`` the tool-call format, ``files.py`` a sandboxed file tree with tools,
``arithmetic.py`` and ``file_task.py`` the built-in environments, ``registry.py`` names to classes.
"""

from tether.envs.base import Environment, StepResult
from tether.envs.registry import ENVIRONMENTS, make_env

__all__ = ["ENVIRONMENTS", "Environment", "StepResult", "make_env"]
