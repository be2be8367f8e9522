"""``tether generate``: sample candidates to judge, one FeedbackItem per prompt.

    tether generate --prompts prompts.jsonl --model tether:default --num-candidates 4 --out items.jsonl
    tether generate --prompts prompts.jsonl --model base=tether:default --model dpo=runs/dpo/final \\
        --num-candidates 1 --out battles.jsonl
"""

from __future__ import annotations

import argparse


def _generate(args: argparse.Namespace) -> None:
    from tether.engine.progress import console
    from tether.feedback.generate import generate_items, load_named_model, read_prompts, write_jsonl
    from tether.rollout.backends import RolloutSettings

    prompts = read_prompts(args.prompts)  # fail on bad input before loading any model
    if args.limit:
        prompts = prompts[:args.limit]
    models = [load_named_model(spec) for spec in args.model]
    items = generate_items(prompts, models, num_candidates=args.num_candidates,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           seed=args.seed, batch_prompts=args.batch_prompts,
                           progress=not args.no_progress, rollout=RolloutSettings(backend=args.backend))
    count = write_jsonl(args.out, items)
    console.print(f"{count} items with {len(items[0].candidates)} candidates each -> {args.out}")


def register(commands) -> None:
    parser = commands.add_parser("generate", help="sample K candidates per prompt to judge",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", required=True, help="JSONL with a 'prompt' field (text or chat)")
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                        help="a model to sample from (repeatable): a checkpoint directory or "
                             "tether:default; the name is recorded on each candidate")
    parser.add_argument("--num-candidates", "-k", type=int, default=2,
                        help="candidates per prompt from each model (default 2)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-prompts", type=int, default=4,
                        help="prompts sampled together (each with its K samples)")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                        help="sampling engine (vllm: needs the vllm extra, docs/scaling.md)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    parser.add_argument("--out", "-o", required=True, help="FeedbackItem JSONL to write")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_generate)
