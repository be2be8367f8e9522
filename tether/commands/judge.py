"""``tether judge``: an AI judge under a constitution, and how well it agrees with people.

    tether judge --items items.jsonl --backend local:tether:default --out judgments.jsonl
    tether judge --items items.jsonl --backend openai:http://localhost:8000 --model NAME \\
        --api-key-env OPENAI_API_KEY --out judgments.jsonl
    tether judge agreement --ai judgments.jsonl --human human.jsonl [--json report.json]

Every pair is judged in both orders; a pair whose orders disagree becomes an inconsistent tie.
"""

from __future__ import annotations

import argparse
import json

from tether.errors import ConfigError
from tether.feedback.constitution import DEFAULT_CONSTITUTION


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["agreement"],
                        help="'agreement': compare --ai with --human instead of judging")
    judging = parser.add_argument_group("judging")
    judging.add_argument("--items", help="FeedbackItem JSONL (tether generate)")
    judging.add_argument("--constitution", default=DEFAULT_CONSTITUTION,
                         help=f"constitution YAML (default {DEFAULT_CONSTITUTION})")
    judging.add_argument("--backend", default="local:tether:default",
                         help="local:PATH (a checkpoint or tether:default) or openai:URL")
    judging.add_argument("--model", default=None, help="model name for the openai backend")
    judging.add_argument("--api-key-env", default="OPENAI_API_KEY",
                         help="environment variable holding the API key (openai backend)")
    judging.add_argument("--annotator", default="ai-judge", help="annotator name on the judgments")
    judging.add_argument("--batch-size", type=int, default=4, help="local backend batch size")
    judging.add_argument("--out", "-o", help="Judgment JSONL to write")
    judging.add_argument("--no-progress", action="store_true")
    agreement = parser.add_argument_group("agreement")
    agreement.add_argument("--ai", help="the AI judge's Judgment JSONL")
    agreement.add_argument("--human", help="people's Judgment JSONL")
    agreement.add_argument("--json", default=None, help="also write the report as JSON here")


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{name.replace('_', '-')}" for name in names if not getattr(args, name)]
    if missing:
        raise ConfigError(f"tether judge{' agreement' if args.action else ''} needs "
                          f"{', '.join(missing)}")


def run_judge(args: argparse.Namespace) -> None:
    from tether.engine.progress import console
    from tether.feedback.constitution import load_constitution
    from tether.feedback.generate import read_records, write_jsonl
    from tether.feedback.judge import judge_items
    from tether.feedback.judge_backends import backend_from_spec
    from tether.feedback.records import FeedbackItem

    _require(args, "items", "out")
    items = read_records(args.items, FeedbackItem)
    constitution = load_constitution(args.constitution)
    backend = backend_from_spec(args.backend, model=args.model, api_key_env=args.api_key_env,
                                batch_size=args.batch_size)
    result = judge_items(items, backend, constitution, annotator=args.annotator,
                         progress=not args.no_progress)
    write_jsonl(args.out, result.judgments)
    consistency = f"{result.consistency:.1%}" if result.consistency is not None else "n/a"
    console.print(f"{len(result.judgments)} judgments -> {args.out}; {result.comparisons} pairs "
                  f"judged in both orders, {result.inconsistent} inconsistent "
                  f"(consistency {consistency}); constitution {constitution.label}")
    if result.failed:
        console.print(f"[yellow]{len(result.failed)} items got no verdict: "
                      f"{', '.join(result.failed[:10])}{' ...' if len(result.failed) > 10 else ''}")


def run_agreement(args: argparse.Namespace) -> None:
    from tether.feedback.agreement import ai_human_agreement
    from tether.feedback.generate import read_records
    from tether.feedback.records import Judgment

    _require(args, "ai", "human")
    report = ai_human_agreement(read_records(args.ai, Judgment), read_records(args.human, Judgment))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    print(format_agreement(report))


def format_agreement(report: dict) -> str:
    def number(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"shared items     {report['shared_items']}",
             f"comparisons      {report['comparisons']} (AI verdict vs each human verdict)",
             f"raw agreement    {number(report['agreement'])}",
             f"Cohen's kappa    {number(report['kappa'])}",
             f"AI inconsistent  {report['ai_inconsistent']} of the shared units (counted as ties)"]
    confusion = report["confusion"]
    if confusion:
        human_labels = sorted({label for row in confusion.values() for label in row})
        width = max(8, *(len(label) for label in [*human_labels, *confusion]))
        lines += ["", "confusion (rows: AI, columns: human)",
                  " " * width + "".join(f" {label:>{width}}" for label in human_labels)]
        for ai_label, row in confusion.items():
            lines.append(f"{ai_label:<{width}}" + "".join(f" {row.get(label, 0):>{width}}"
                                                        for label in human_labels))
    return "\n".join(lines)


def _judge(args: argparse.Namespace) -> None:
    if args.action == "agreement":
        run_agreement(args)
    else:
        run_judge(args)


def register(commands) -> None:
    judge = commands.add_parser("judge", help="AI judge under a constitution; agreement with people",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_options(judge)
    judge.set_defaults(handler=_judge)
