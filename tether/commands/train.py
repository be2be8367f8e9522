"""``tether train ALGO --config RECIPE [--resume] key.sub=value ...``"""

from __future__ import annotations

import argparse
import importlib

# algorithm name -> ("module:ConfigClass", "module:function that trains")
TRAINERS = {
    "sft": ("tether.algorithms.sft:SFTConfig", "tether.algorithms.sft:train_sft"),
    "dpo": ("tether.algorithms.dpo:DPOConfig", "tether.algorithms.dpo:train_dpo"),
    "grpo": ("tether.algorithms.grpo:GRPOConfig", "tether.algorithms.grpo:train_grpo"),
    "reward": ("tether.algorithms.reward:RewardModelConfig", "tether.algorithms.reward:train_reward_model"),
    "ppo": ("tether.algorithms.ppo:PPOConfig", "tether.algorithms.ppo:train_ppo"),
    "rlhf": ("tether.algorithms.rlhf:RLHFConfig", "tether.algorithms.rlhf:run_rlhf"),
    "cai": ("tether.algorithms.cai:CAIConfig", "tether.algorithms.cai:run_cai"),
    "consistency": ("tether.algorithms.consistency:ConsistencyConfig",
                    "tether.algorithms.consistency:train_consistency"),
}

SUMMARIES = {"sft": "supervised fine-tuning on prompt/completion or chat records",
             "dpo": "direct preference optimization on chosen/rejected pairs",
             "grpo": "group-relative policy optimization with reward functions",
             "reward": "a Bradley-Terry reward model on preference pairs or rankings",
             "ppo": "PPO with a value head against reward functions or a reward model",
             "rlhf": "generate, rank, train a reward model, then PPO, in one run folder",
             "cai": "constitutional AI: critique, revision, SFT, AI judge, DPO",
             "consistency": "consistency training (BCT, ACT): answer wrapped prompts as the clean ones"}


def _train(args: argparse.Namespace) -> None:
    from tether.config import load_config

    config_class, train = (_resolve(target) for target in TRAINERS[args.algorithm])
    overrides = list(args.overrides) + (["train.resume=true"] if args.resume else [])
    train(load_config(config_class, args.config, overrides))


def _resolve(target: str):
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


class _KeysHelp(argparse.Action):
    """``-h/--help`` of ``tether train ALGO``: the usual help, then every key of ALGO's config
    with its type, default and description, read from the config class (so it cannot drift)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from tether.config_reference import format_help

        parser.print_help()
        print("\n" + format_help(_resolve(TRAINERS[parser.algorithm][0])))
        parser.exit()


def register(commands) -> None:
    train = commands.add_parser("train", help="train a model with one algorithm",
                                description="`tether train ALGO --help` lists ALGO's config keys.")
    algorithms = train.add_subparsers(dest="algorithm", required=True, metavar="ALGO")
    for name in TRAINERS:
        algorithm = algorithms.add_parser(name, add_help=False, help=SUMMARIES[name],
                                          description=f"{SUMMARIES[name]}. Every key below can be set in "
                                          "the recipe or overridden as key.sub=value.")
        algorithm.algorithm = name
        algorithm.add_argument("-h", "--help", action=_KeysHelp, help="show this help and every config key")
        algorithm.add_argument("--config", "-c", help="YAML recipe: a path, or tether:recipes/NAME.yaml "
                                                      "for one shipped with tether (tether recipes list)")
        algorithm.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        algorithm.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        algorithm.set_defaults(handler=_train)
