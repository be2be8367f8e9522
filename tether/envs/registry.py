"""Environments by name, for ``grpo.environment.name`` and the audits."""

from __future__ import annotations

from tether.envs.arithmetic import ArithmeticEnv
from tether.envs.base import Environment
from tether.envs.file_task import FileCountEnv
from tether.errors import ConfigError
from tether.rewards.resolve import import_user_module

ENVIRONMENTS: dict[str, type[Environment]] = {"arithmetic": ArithmeticEnv, "file_count": FileCountEnv}


def make_env(name: str, **settings) -> Environment:
    """A fresh environment: a built-in name or ``package.module:Class``."""
    if name in ENVIRONMENTS:
        return ENVIRONMENTS[name](**settings)
    if ":" in name:
        module_name, class_name = name.split(":", 1)
        try:
            return getattr(import_user_module(module_name), class_name)(**settings)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"cannot import environment {name!r}: {error}") from None
    raise ConfigError(f"unknown environment {name!r}; built-in: {', '.join(ENVIRONMENTS)}, or 'package.module:Class'")
