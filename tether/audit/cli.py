"""``tether audit --baseline PATH --candidate PATH``: what post-training did to a model.

    tether audit --baseline tether:default --candidate runs/safety-dpo/final \\
        --suite default --out runs/safety-dpo/audit --fail-on "over_refusal>+5pp,toxicity_prob>+2pp"

Runs every metric module of the suite on both models, bootstraps 95% intervals, writes
``audit.json`` and ``audit.html`` to ``--out`` and prints the summary table.

Exit status: 0 all good; 1 a metric module failed to run (the others are still reported);
2 bad arguments (unreadable ``--fail-on``, unknown metric, missing model); 3 a gate failed.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from tether.errors import TetherError

EXIT_MODULE_FAILED, EXIT_USAGE, EXIT_GATE_FAILED = 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    from tether.audit.suite import SUITES
    from tether.judges.registry import add_judge_arguments
    from tether.rollout.generate import DEFAULT_BATCH_SIZE

    parser = argparse.ArgumentParser(prog="tether audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="model before training: a checkpoint or "
                        "LoRA adapter directory, or tether:default (the bundled SmolLM2)")
    parser.add_argument("--candidate", required=True, help="model after training (same forms)")
    parser.add_argument("--suite", default="default", choices=sorted(SUITES),
                        help="default: full sizes (minutes on a CPU); quick: 6 probes per set")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N probes per probe set (default: the suite's sizes)")
    parser.add_argument("--out", default=None, help="output directory (default runs/audit-TIMESTAMP)")
    parser.add_argument("--fail-on", default="", metavar="GATES",
                        help='comma-separated gates on candidate - baseline, e.g. '
                             '"over_refusal>+5pp,toxicity_prob>+2pp,drift_kl>0.5"; exit 3 when one fails')
    add_judge_arguments(parser, counted_by="the refusal metrics count with")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="prompts per generation batch")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                        help="engine that generates the answers (vllm: one engine that takes each model's weights "
                             "in turn; needs the vllm extra, docs/scaling.md). The representation audit's "
                             "ablations always generate with transformers")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="vllm: KV-cache memory (GiB)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return parser


def model_name(text: str) -> str:
    """``tether:default`` -> ``default``; paths unchanged."""
    return text.split(":", 1)[1] if text.startswith("tether:") else text


def _load(label: str, path: str, batch_size: int, cache: dict):
    from tether.audit.base import AuditModel
    from tether.models import load_model

    if path not in cache:
        cache[path] = load_model(model_name(path))
    model, tokenizer = cache[path]
    return AuditModel(name=label, model=model, tokenizer=tokenizer, path=path, batch_size=batch_size)


def attach_samplers(models: list, settings) -> None:
    """On vLLM, give each AuditModel a sampler of one shared engine. On transformers nothing is
    attached: an AuditModel without a sampler generates with tether's own loop."""
    if settings.backend == "transformers":
        return
    from tether.rollout.backends import make_samplers

    samplers = make_samplers([(m.model, m.tokenizer) for m in models], settings, bf16=False)
    for model, sampler in zip(models, samplers, strict=True):
        model.sampler = sampler


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    err = Console(stderr=True)
    try:
        return _run(args, err)
    except TetherError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace, err) -> int:
    from tether.audit.gate import check_gates, evaluate_gates, parse_fail_on
    from tether.audit.report import print_table, write_report
    from tether.audit.suite import declared_metrics, resolve_suite, run_suite
    from tether.rollout.backends import RolloutSettings

    # ---- everything that can be wrong with the arguments fails before any model loads
    gates = parse_fail_on(args.fail_on)
    modules = resolve_suite(args.suite)
    declared, complete = declared_metrics(modules)
    known = [g for g in gates if g.metric in declared]
    check_gates(gates if complete else known, declared)
    judge = None
    if args.judge or args.judge_bound or args.judge_calibration:
        from tether.judges.conformal import format_guarantee
        from tether.judges.registry import judge_from_options

        judge = judge_from_options(args.judge, args.judge_bound, args.judge_calibration)
        if hasattr(judge, "guarantee"):
            err.print(format_guarantee(judge.guarantee()), markup=False, highlight=False)

    # ---- models: one copy when both paths are the same
    cache: dict = {}
    err.print(f"loading baseline {args.baseline} and candidate {args.candidate}")
    baseline = _load("baseline", args.baseline, args.batch_size, cache)
    candidate = _load("candidate", args.candidate, args.batch_size, cache)
    attach_samplers([baseline, candidate], RolloutSettings(backend=args.backend, kv_cache_gib=args.kv_cache_gib))

    # ---- metrics
    try:
        run = run_suite(baseline, candidate, args.suite, limit=args.limit, resamples=args.resamples,
                        seed=args.seed, log=err.print, judge=judge)
    finally:
        for model in (baseline, candidate):  # the engine (vllm: one for both models), or tether's samplers
            sampler = getattr(model, "sampler", None)
            if sampler is not None:
                sampler.close()
    out = Path(args.out or f"runs/audit-{datetime.now():%Y%m%d-%H%M%S}")
    try:
        # gates on metrics of modules that declared nothing can only be checked now
        check_gates(gates, {**declared, **run.units()})
        missing = [g.text for g in gates if g.metric not in run.changes()]
        if missing:
            raise TetherError(f"gates {', '.join(missing)} could not be checked: their metric "
                              f"module failed ({', '.join(run.errors)})")
    except TetherError:
        write_report(run, out, baseline=args.baseline, candidate=args.candidate)  # keep the work
        raise
    outcomes = evaluate_gates(gates, run.changes(), run.evidence())

    # ---- outputs
    json_path, html_path = write_report(run, out, baseline=args.baseline, candidate=args.candidate,
                                        gates=outcomes)
    print_table(run, outcomes)
    print(f"wrote {json_path} and {html_path}")
    if any(o.failed for o in outcomes):
        print("audit FAILED: " + "; ".join(o.describe() for o in outcomes if o.failed), file=sys.stderr)
        return EXIT_GATE_FAILED
    if run.errors:
        print(f"audit incomplete: {', '.join(run.errors)} failed to run", file=sys.stderr)
        return EXIT_MODULE_FAILED
    return 0
