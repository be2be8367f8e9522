"""Environments by name, for ``grpo.environment.name`` and the audits. Imported when asked for, so
the audit's environments (which build on this package) load only when used."""

from __future__ import annotations

from tether.envs.base import Environment
from tether.errors import ConfigError
from tether.rewards.resolve import import_user_module

ENVIRONMENTS: dict[str, str] = {
    "arithmetic": "tether.envs.arithmetic:ArithmeticEnv",
    "file_count": "tether.envs.file_task:FileCountEnv",
    "agentic_scenario": "tether.audit.agentic.envs:ScenarioEnv",
    "spec_task": "tether.audit.agentic.envs:CodeTaskEnv",
}


def make_env(name: str, **settings) -> Environment:
    """A fresh environment: a built-in name or ``package.module:Class``."""
    target = ENVIRONMENTS.get(name, name)
    if ":" not in target:
        raise ConfigError(f"unknown environment {name!r}; built-in: {', '.join(ENVIRONMENTS)}, "
                          "or 'package.module:Class'")
    module_name, class_name = target.split(":", 1)
    try:
        return getattr(import_user_module(module_name), class_name)(**settings)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot import environment {name!r}: {error}") from None
