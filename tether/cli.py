"""The ``tether`` command.

    tether train sft --config recipes/sft-demo.yaml optim.lr=1e-4 train.max_steps=20
    tether train sft --config recipes/sft-demo.yaml --resume
    tether train dpo --config recipes/safety-dpo.yaml dpo.beta=0.2
    tether demo              # safety DPO on the bundled SmolLM2, before/after table
    tether demo arith        # SFT warm-up + GRPO on arithmetic, held-out accuracy curve
"""

from __future__ import annotations

import argparse
import os
import sys

# OpenMP threads that spin while waiting steal the core the other thread needs whenever the
# machine is shared (measured: a SmolLM2 forward took 5-13 s instead of ~3 s). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tether.errors import TetherError

TRAINERS = ("sft", "dpo", "grpo")


def _train(args: argparse.Namespace) -> None:
    from tether.config import DPOConfig, GRPOConfig, SFTConfig, load_config

    overrides = list(args.overrides) + (["train.resume=true"] if args.resume else [])
    if args.algorithm == "sft":
        from tether.algorithms.sft import train_sft

        train_sft(load_config(SFTConfig, args.config, overrides))
    elif args.algorithm == "dpo":
        from tether.algorithms.dpo import train_dpo

        train_dpo(load_config(DPOConfig, args.config, overrides))
    elif args.algorithm == "grpo":
        from tether.algorithms.grpo import train_grpo

        train_grpo(load_config(GRPOConfig, args.config, overrides))


DEMOS = ("safety", "arith")


def _demo(args: argparse.Namespace) -> None:
    # `tether demo [JOB] [overrides]`: an optional job name, then key=value overrides.
    words = list(args.overrides)
    job = words.pop(0) if words and "=" not in words[0] else "safety"
    if job not in DEMOS:
        raise SystemExit(f"tether demo: unknown job {job!r}; choose one of {', '.join(DEMOS)}")
    args.overrides = words
    if job == "safety":
        from tether.demos.safety import run_demo
    else:
        from tether.demos.arith import run_arith_demo as run_demo
    run_demo(args.overrides, steps=args.steps, eval_limit=args.eval_limit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model with one algorithm")
    train.add_argument("algorithm", choices=TRAINERS)
    train.add_argument("--config", "-c", help="YAML recipe (see recipes/)")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    train.set_defaults(handler=_train)

    demo = commands.add_parser("demo", help="a main job on the bundled default model")
    demo.add_argument("--steps", type=int, default=None, help="optimizer steps (default: recipe's)")
    demo.add_argument("--eval-limit", type=int, default=None,
                      help="held-out prompts (per kind for safety) to evaluate (default: all)")
    demo.add_argument("overrides", nargs="*", metavar="[JOB] OVERRIDES",
                      help="JOB is safety (LoRA DPO, refusal rates before/after; the default) or "
                           "arith (SFT warm-up then GRPO with verifiable rewards); then key.sub=value")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub at run time
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    # Overrides may come before or after options (`--config X a.b=c --resume a.d=e`); argparse
    # only gathers the first run of positionals, so collect the rest here.
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(getattr(args, "overrides", [])) + extra
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tether draws its own bars; per-file loading bars are noise
    try:
        args.handler(args)
    except TetherError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
