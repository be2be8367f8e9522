"""A difficulty filter for RL tasks: keep the tasks at the policy's frontier.

    python -m tether.tasks.difficulty MODEL TASKS.jsonl OUT.jsonl [--limit N] [--samples K] [--bf16]

GRPO learns only from groups whose rewards differ: a task the policy always solves (pass rate 1)
or never solves (pass rate 0) gives every sample the advantage 0. Measuring each task's pass rate
once, before RL, with K samples at the training temperature, and training only on tasks with
0 < rate < 1 (as DAPO's and verl's offline difficulty filters do) makes every drawn group more
likely to carry signal. A task with true rate p lands in the kept band with probability
1 - p^K - (1 - p)^K, so the filter keeps tasks the policy sometimes solves, not only those near 50%.

``OUT.jsonl`` holds the kept task rows unchanged (in their original order); ``OUT.rates.jsonl``
holds every measured task's ``{"id", "pass_rate"}``, so the choice can be checked or redrawn.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from tether.rewards.base import RewardSpec, combine_rewards, reward_columns
from tether.rollout.sampler import RolloutConfig, TransformersSampler


def pass_rates(model, tokenizer, records: Sequence, specs: Sequence[RewardSpec], *, samples: int,
               temperature: float, max_new_tokens: int, seed: int = 12345, reward: str = "math_answer",
               batch_prompts: int | None = 16) -> list[float]:
    """Per task, the share of ``samples`` completions (sampled as in a rollout) that ``reward``
    scores 1.0. ``records`` are verifiable records (``prompt``, ``answer``)."""
    prompts = [r.prompt for r in records]
    rollout = TransformersSampler(model, tokenizer).sample(prompts, RolloutConfig(
        num_samples=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
        batch_prompts=batch_prompts))
    _, per_reward, _ = combine_rewards(specs, [p for p in prompts for _ in range(samples)], rollout.texts,
                                       reward_columns(records, samples), on_error="score_failed")
    right = [float(value == 1.0) for value in per_reward[reward]]
    return [sum(right[i * samples:(i + 1) * samples]) / samples for i in range(len(records))]


def at_frontier(rates: Sequence[float]) -> list[int]:
    """Indices of the tasks with 0 < pass rate < 1: those whose groups can carry a GRPO signal."""
    return [i for i, rate in enumerate(rates) if 0.0 < rate < 1.0]


def main(argv: list[str] | None = None) -> dict:
    from tether.config import RewardSettings
    from tether.data import load_records
    from tether.models import load_model
    from tether.rewards.resolve import reward_specs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the policy RL starts from (e.g. the SFT warm-up's final/)")
    parser.add_argument("tasks", type=Path, help="verifiable task rows (JSONL with prompt and answer)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="measure only the first N tasks")
    parser.add_argument("--samples", type=int, default=8, help="samples per task (as num_generations)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--bf16", action="store_true", help="sample under bf16 autocast")
    args = parser.parse_args(argv)
    lines = [line for line in args.tasks.read_text().splitlines() if line.strip()][:args.limit]
    records = load_records(str(args.tasks), "verifiable")[:len(lines)]
    model, tokenizer = load_model(args.model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        rates = pass_rates(model, tokenizer, records, reward_specs([RewardSettings(name="math_answer")]),
                           samples=args.samples, temperature=args.temperature,
                           max_new_tokens=args.max_new_tokens, seed=args.seed)
    kept = at_frontier(rates)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(lines[i] + "\n" for i in kept))
    args.out.with_suffix(".rates.jsonl").write_text(
        "".join(json.dumps({"id": r.id, "pass_rate": rate}) + "\n" for r, rate in zip(records, rates)))
    summary = {"measured": len(records), "kept": len(kept), "all_right": sum(rate == 1.0 for rate in rates),
               "all_wrong": sum(rate == 0.0 for rate in rates), "mean_pass_rate": sum(rates) / max(len(rates), 1)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
