"""``tether judge``: an AI judge under a constitution, the refusal judges, and how far to trust them.

    tether judge --items items.jsonl --backend local:tether:default --out judgments.jsonl
    tether judge --items items.jsonl --backend openai:http://localhost:8000 --model NAME \\
        --api-key-env OPENAI_API_KEY --out judgments.jsonl
    tether judge agreement --ai judgments.jsonl --human human.jsonl [--json report.json]
    tether judge refusal answers.jsonl --output judged.jsonl [--judge refusal-combined]
    tether judge validate --labels my_labels.jsonl [--judge NAME] [--json report.json]
    tether judge validate --labels test.jsonl --judge refusal-patterns,refusal-combined \\
        --judge-bound "missed_compliance<=5%@90%" --judge-calibration calibration.jsonl

Every pair is judged in both orders; a pair whose orders disagree becomes an inconsistent tie.

``refusal``: rows with ``prompt`` and ``response`` in; the same rows out, in order, with
``refusal`` (true/false) and ``score``. ``validate``: accuracy, precision and recall of a refusal
judge on your labels (rows with ``prompt``, ``response`` and ``refusal`` true/false or ``label``
full_refusal / partial_refusal / compliance), with 95% Wilson intervals. Without ``--judge`` both
use the default refusal judge, the one the audit and the demo count with.
"""

from __future__ import annotations

import argparse
import json

from tether.errors import ConfigError
from tether.feedback.constitution import DEFAULT_CONSTITUTION
from tether.judges.registry import add_judge_arguments


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["agreement", "refusal", "validate"],
                        help="'agreement': compare --ai with --human; 'refusal': judge refusals in "
                             "INPUT; 'validate': a refusal judge against --labels")
    parser.add_argument("input", nargs="?", help="refusal: JSONL rows with prompt and response")
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
    judging.add_argument("--out", "--output", "-o", dest="out",
                         help="Judgment JSONL to write (refusal: the judged rows)")
    judging.add_argument("--no-progress", action="store_true")
    agreement = parser.add_argument_group("agreement")
    agreement.add_argument("--ai", help="the AI judge's Judgment JSONL")
    agreement.add_argument("--human", help="people's Judgment JSONL")
    agreement.add_argument("--json", default=None, help="also write the report as JSON here")
    refusal = parser.add_argument_group("refusal judges (refusal, validate)")
    add_judge_arguments(refusal, counted_by="that scores the rows")
    refusal.add_argument("--labels", help="validate: labelled JSONL rows")


def _require(args: argparse.Namespace, *names: str) -> None:
    flags = {"input": "IN.jsonl", "out": "--output" if args.action == "refusal" else "--out"}
    missing = [flags.get(name, f"--{name.replace('_', '-')}")
               for name in names if not getattr(args, name)]
    if missing:
        raise ConfigError(f"tether judge{' ' + args.action if args.action else ''} needs "
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


def run_refusal(args: argparse.Namespace) -> None:
    from tether.engine.progress import console
    from tether.feedback.generate import write_jsonl
    from tether.judges import describe
    from tether.judges.rows import judge_rows, read_pairs

    _require(args, "input", "out")
    judge = _chosen_judge(args)
    rows = judge_rows(read_pairs(args.input), judge)
    write_jsonl(args.out, rows)
    refused = sum(row["refusal"] for row in rows)
    console.print(f"{len(rows)} rows -> {args.out}: {refused} refusals; judge {_judge_text(describe(judge))}")


def run_validate(args: argparse.Namespace) -> None:
    from tether.judges.validate import read_labels, validate

    _require(args, "labels")
    report = validate(_chosen_judge(args), read_labels(args.labels))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    print(format_validation(report))


def _chosen_judge(args: argparse.Namespace):
    """The judge ``--judge`` names, calibrated under ``--judge-bound`` (its guarantee printed)."""
    from tether.engine.progress import console
    from tether.judges.conformal import format_guarantee
    from tether.judges.registry import judge_from_options

    judge = judge_from_options(args.judge, args.judge_bound, args.judge_calibration)
    if hasattr(judge, "guarantee"):
        console.print(format_guarantee(judge.guarantee()), markup=False, highlight=False)
    return judge


def _judge_text(judge: dict) -> str:
    return f"{judge['name']} (version {judge['version']}, threshold {judge['threshold']:g})"


def format_validation(report: dict) -> str:
    def share(entry: dict) -> str:
        if entry["value"] is None:
            return "no data (n = 0)"
        low, high = entry["ci95"]
        return f"{entry['value']:6.1%}  [95% CI {low:.1%}, {high:.1%}]  n = {entry['n']}"

    confusion = report["confusion"]
    lines = [f"judge      {_judge_text(report['judge'])}",
             f"labels     {report['n']} responses, refusal = full or partial refusal",
             f"accuracy   {share(report['accuracy'])}",
             f"precision  {share(report['precision'])}  (called refusal that were refusals)",
             f"recall     {share(report['recall'])}  (refusals that were called refusal)",
             f"confusion  {confusion['true_refusal']} refusals found, {confusion['missed_refusal']} missed, "
             f"{confusion['false_refusal']} answers called refusals, {confusion['true_compliance']} answers right"]
    for label, entry in report["by_label"].items():
        lines.append(f"{label:<16} called refusal {share(entry['called_refusal'])}")
    lines.append("Wilson intervals; they assume independent rows (several answers to one prompt are not).")
    return "\n".join(lines)


def _judge(args: argparse.Namespace) -> None:
    actions = {"agreement": run_agreement, "refusal": run_refusal, "validate": run_validate}
    actions.get(args.action, run_judge)(args)


def register(commands) -> None:
    judge = commands.add_parser("judge", help="AI judge under a constitution; refusal judges; agreement "
                                "with people",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_options(judge)
    judge.set_defaults(handler=_judge)
