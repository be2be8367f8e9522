"""``tether train ALGO --config RECIPE [--resume] key.sub=value ...``"""

from __future__ import annotations

import argparse
import importlib

# algorithm name -> ("module:ConfigClass", "module:function that trains")
TRAINERS = {
    "sft": ("tether.config:SFTConfig", "tether.algorithms.sft:train_sft"),
    "dpo": ("tether.config:DPOConfig", "tether.algorithms.dpo:train_dpo"),
    "grpo": ("tether.config:GRPOConfig", "tether.algorithms.grpo:train_grpo"),
    "reward": ("tether.algorithms.reward:RewardModelConfig", "tether.algorithms.reward:train_reward_model"),
    "ppo": ("tether.algorithms.ppo:PPOConfig", "tether.algorithms.ppo:train_ppo"),
    "rlhf": ("tether.algorithms.rlhf:RLHFConfig", "tether.algorithms.rlhf:run_rlhf"),
    "cai": ("tether.algorithms.cai:CAIConfig", "tether.algorithms.cai:run_cai"),
    "consistency": ("tether.algorithms.consistency:ConsistencyConfig",
                    "tether.algorithms.consistency:train_consistency"),
}


def _train(args: argparse.Namespace) -> None:
    from tether.config import load_config

    config_class, train = (_resolve(target) for target in TRAINERS[args.algorithm])
    overrides = list(args.overrides) + (["train.resume=true"] if args.resume else [])
    train(load_config(config_class, args.config, overrides))


def _resolve(target: str):
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


def register(commands) -> None:
    train = commands.add_parser("train", help="train a model with one algorithm")
    train.add_argument("algorithm", choices=sorted(TRAINERS))
    train.add_argument("--config", "-c", help="YAML recipe (see recipes/)")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    train.set_defaults(handler=_train)
