"""Held-out accuracy intervals for a finished `tether demo arith` run, from its saved models.

    python benchmarks/arith_intervals.py RUN_ROOT [--bf16] [--samples K]

RUN_ROOT is the demo's train.output_dir (holding arith-sft/ and arith-grpo/). Runs made before
GRPO kept its held-out answers (heldout_answers/) are answered again here, greedily, with the
SFT warm-up's model (step 0) and the GRPO output (the last step), under the precision they were
trained in; the accuracies must match the run's metrics.jsonl. Prints and returns the intervals
`tether demo arith` reports. With ``--samples K`` it also measures the accuracy GRPO trains
(K completions per held-out task sampled at the recipe's temperature, as in a rollout) before
and after GRPO, with a paired bootstrap interval over tasks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tether.algorithms.grpo import GRPOConfig, answer_tasks
from tether.audit.base import MetricResult
from tether.audit.bootstrap import delta_test
from tether.config import load_config
from tether.data import load_records
from tether.demos.arith import RECIPES, accuracy_intervals
from tether.engine import read_metrics
from tether.models import load_model
from tether.rewards.resolve import reward_specs
from tether.tasks.difficulty import pass_rates


def answers(model_path: Path, out: Path, records, specs, config: GRPOConfig) -> list[dict]:
    if not out.is_file():
        model, tokenizer = load_model(model_path)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.train.bf16):
            rows = answer_tasks(model, tokenizer, records, specs, config)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [json.loads(line) for line in out.read_text().splitlines()]


def sampled_accuracy(model_path: Path, records, specs, config: GRPOConfig, samples: int) -> MetricResult:
    """Per task, the share of ``samples`` completions (temperature as in training) that are right."""
    model, tokenizer = load_model(model_path)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.train.bf16):
        rates = pass_rates(model, tokenizer, records, specs, samples=samples, temperature=config.grpo.temperature,
                           max_new_tokens=config.grpo.max_new_tokens, seed=12345, batch_prompts=None)
    items = [{"id": r.id, "right": rate} for r, rate in zip(records, rates)]
    return MetricResult("sampled_accuracy", sum(i["right"] for i in items) / len(items), items,
                        statistic=lambda chosen: sum(i["right"] for i in chosen) / max(len(chosen), 1))


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_root", type=Path)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--answers", type=Path,
                        help="where answers are kept (default: RUN_ROOT/arith-grpo/heldout_answers)")
    parser.add_argument("--samples", type=int, default=0, help="also the sampled accuracy, K samples per task")
    parser.add_argument("--heldout", default=None, help="the run's held-out tasks (default: the recipe's, "
                        "300 tasks; runs made before them used tether:resources/arith/heldout.jsonl)")
    args = parser.parse_args()
    config = load_config(GRPOConfig, RECIPES / "arith-grpo.yaml", [f"train.bf16={str(args.bf16).lower()}"]
                         + ([f"data.eval={args.heldout}"] if args.heldout else []))
    records = load_records(config.data.eval, "verifiable")
    specs = reward_specs(config.grpo.rewards)
    grpo_dir = args.run_root / "arith-grpo"
    evals = [row for row in read_metrics(grpo_dir) if "eval/math_answer" in row]
    first, last = evals[0], evals[-1]
    kept = args.answers or grpo_dir / "heldout_answers"
    sft_model = args.run_root / "arith-sft" / "final"
    rows = {"after_sft": answers(sft_model, kept / "step-00000.jsonl", records, specs, config),
            "after_grpo": answers(grpo_dir / "final", kept / f"step-{last['step']:05d}.jsonl", records, specs, config)}
    intervals = accuracy_intervals(rows)
    intervals["logged"] = {"after_sft": first["eval/math_answer"], "after_grpo": last["eval/math_answer"]}
    if args.samples:
        before, after = (sampled_accuracy(path, records, specs, config, args.samples)
                         for path in (args.run_root / "arith-sft" / "final", grpo_dir / "final"))
        interval, _, p_value = delta_test(before, after, resamples=2000)
        intervals["sampled"] = {"samples": args.samples, "after_sft": before.value, "after_grpo": after.value,
                                "change_low": interval.low, "change_high": interval.high, "p_value": p_value}
    print(json.dumps({"run": str(args.run_root), "bf16": args.bf16, **intervals}))
    return intervals


if __name__ == "__main__":
    main()
