"""Every bundled recipe parses under the config class of the algorithm it is for."""

import importlib
from pathlib import Path

import pytest

from tether.commands.train import TRAINERS
from tether.config import load_config

RECIPES = Path(__file__).resolve().parent.parent / "tether" / "recipes"
ALGORITHM = {"safety-dpo.yaml": "dpo", "arith-sft.yaml": "sft", "arith-grpo.yaml": "grpo",
             "reward-model.yaml": "reward", "rlhf-ppo.yaml": "rlhf", "cai.yaml": "cai"}


def test_every_recipe_is_listed():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == sorted(ALGORITHM)


@pytest.mark.parametrize("bf16_is_fast", [False, True])  # the recipes say bf16: auto
@pytest.mark.parametrize("name", sorted(ALGORITHM))
def test_recipe_loads(name, bf16_is_fast, monkeypatch):
    monkeypatch.setattr("tether.hardware.bf16_is_fast", lambda: bf16_is_fast)
    module_name, class_name = TRAINERS[ALGORITHM[name]][0].split(":")
    config = load_config(getattr(importlib.import_module(module_name), class_name), RECIPES / name, [])
    assert config.train.run_name and config.train.bf16 is bf16_is_fast
