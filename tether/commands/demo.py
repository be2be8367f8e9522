"""``tether demo [JOB] [--steps N] [--eval-limit N] key.sub=value ...``"""

from __future__ import annotations

import argparse

DEMOS = ("safety", "arith", "arith-tools", "consistency")


def _demo(args: argparse.Namespace) -> None:
    # An optional job name first, then key=value overrides.
    words = list(args.overrides)
    job = words.pop(0) if words and "=" not in words[0] else "safety"
    if job not in DEMOS:
        raise SystemExit(f"tether demo: unknown job {job!r}; choose one of {', '.join(DEMOS)}")
    if job == "consistency":
        from tether.demos.consistency import run_consistency_demo

        run_consistency_demo(words, steps=args.steps, eval_limit=args.eval_limit, seeds=args.seeds)
        return
    if args.seeds != 1:
        raise SystemExit(f"tether demo: --seeds is for the consistency job; run {job} again with train.seed=N")
    if job == "safety":
        from tether.demos.safety import run_demo
    elif job == "arith-tools":
        from tether.demos.arith_tools import run_arith_tools_demo as run_demo
    else:
        from tether.demos.arith import run_arith_demo as run_demo
    run_demo(words, steps=args.steps, eval_limit=args.eval_limit)


def register(commands) -> None:
    demo = commands.add_parser("demo", help="a main job on the bundled default model")
    demo.add_argument("--steps", type=int, default=None, help="optimizer steps (default: recipe's)")
    demo.add_argument("--eval-limit", type=int, default=None,
                      help="held-out prompts (per kind for safety) to evaluate (default: all)")
    demo.add_argument("--seeds", type=int, default=1, help="consistency: train and audit this many seeds")
    demo.add_argument("overrides", nargs="*", metavar="[JOB] OVERRIDES",
                      help="JOB is safety (LoRA DPO, refusal rates before/after; the default), "
                           "arith (SFT warm-up then GRPO with verifiable rewards), arith-tools (the same with a "
                           "calculator tool in multi-turn episodes) or consistency "
                           "(BCT against jailbreak wrappers, audited; model.path=runs/safety-dpo/final); "
                           "then key.sub=value")
    demo.set_defaults(handler=_demo)
