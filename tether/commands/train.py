"""``tether train ALGO --config RECIPE [--resume] key.sub=value ...``"""

from __future__ import annotations

import argparse
import importlib

# algorithm name -> (config class in tether.config, "module:function" that trains)
TRAINERS = {
    "sft": ("SFTConfig", "tether.algorithms.sft:train_sft"),
    "dpo": ("DPOConfig", "tether.algorithms.dpo:train_dpo"),
    "grpo": ("GRPOConfig", "tether.algorithms.grpo:train_grpo"),
}


def _train(args: argparse.Namespace) -> None:
    from tether import config as configs

    config_name, target = TRAINERS[args.algorithm]
    module_name, function_name = target.split(":")
    train = getattr(importlib.import_module(module_name), function_name)
    overrides = list(args.overrides) + (["train.resume=true"] if args.resume else [])
    train(configs.load_config(getattr(configs, config_name), args.config, overrides))


def register(commands) -> None:
    train = commands.add_parser("train", help="train a model with one algorithm")
    train.add_argument("algorithm", choices=sorted(TRAINERS))
    train.add_argument("--config", "-c", help="YAML recipe (see recipes/)")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    train.set_defaults(handler=_train)
