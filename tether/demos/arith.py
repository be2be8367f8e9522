"""``tether demo arith``: reasoning RL on the bundled SmolLM2-135M-Instruct.

1. SFT warm-up on 64 worked answers (recipes/arith-sft.yaml): the base model never writes the
   <think>/<answer> format by itself, so RL would have no signal to start from.
2. GRPO with verifiable rewards (recipes/arith-grpo.yaml): exact answers checked by
   math-verify, plus a format reward; held-out accuracy measured before and during training.
3. A table of held-out accuracy (base, after SFT, after GRPO), each with its 95% Wilson interval,
   and the GRPO change with a paired bootstrap interval over tasks (the same tasks are answered
   before and after, so task difficulty cancels); ``curves.png`` in the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.table import Table

from tether.algorithms.grpo import GRPOConfig, answer_tasks, mean_scores, train_grpo
from tether.algorithms.sft import SFTConfig, train_sft
from tether.audit.base import MetricResult
from tether.audit.bootstrap import delta_test
from tether.config import load_config
from tether.data import load_records
from tether.engine import console, read_metrics
from tether.judges.validate import wilson_interval
from tether.models import load_model
from tether.rewards.resolve import reward_specs

RECIPES = Path(__file__).parent.parent / "recipes"


def run_arith_demo(overrides: list[str], steps: int | None = None, eval_limit: int | None = None) -> dict:
    # Settings of the whole job reach both stages: where runs go, the seed, the precision.
    shared = [o for o in overrides if o.startswith(("train.output_dir=", "train.progress=", "train.threads=",
                                                     "train.seed=", "train.bf16="))]
    grpo_config = load_config(GRPOConfig, RECIPES / "arith-grpo.yaml",
                              list(overrides) + ([f"train.max_steps={steps}"] if steps else []))
    sft_config = load_config(SFTConfig, RECIPES / "arith-sft.yaml", shared)
    grpo_config.model.path = str(sft_config.run_dir() / "final")
    if eval_limit:
        grpo_config.data.eval = _first_lines(grpo_config.data.eval, eval_limit, grpo_config.run_dir())
    held_out = load_records(grpo_config.data.eval, "verifiable")
    specs = reward_specs(grpo_config.grpo.rewards)

    console.rule("1/3  the base model and the SFT warm-up")
    base, tokenizer = load_model(sft_config.model.path)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=grpo_config.train.bf16):
        base_rows = answer_tasks(base, tokenizer, held_out, specs, grpo_config)
    before = mean_scores(base_rows, [spec.name for spec in specs])
    del base
    train_sft(sft_config)

    console.rule("2/3  GRPO with verifiable rewards")
    train_grpo(grpo_config)

    console.rule("3/3  held-out results")
    history = [row for row in read_metrics(grpo_config.run_dir()) if "eval/math_answer" in row]
    after_sft, after_grpo = history[0], history[-1]
    answers = grpo_config.run_dir() / "heldout_answers"
    sft_rows, grpo_rows = (_read_rows(answers / f"step-{row['step']:05d}.jsonl") for row in (after_sft, after_grpo))
    intervals = accuracy_intervals({"base": base_rows, "after_sft": sft_rows, "after_grpo": grpo_rows})
    results = {
        "accuracy": {"base": before["math_answer"], "after_sft": after_sft["eval/math_answer"],
                     "after_grpo": after_grpo["eval/math_answer"]},
        "format": {"base": before["think_answer_format"], "after_sft": after_sft["eval/think_answer_format"],
                   "after_grpo": after_grpo["eval/think_answer_format"]},
        "accuracy_ci95": intervals,
        "num_heldout": len(held_out), "grpo_steps": after_grpo["step"],
        "curve": str(grpo_config.run_dir() / "curves.png"),
    }
    (grpo_config.run_dir() / "demo_results.json").write_text(json.dumps(results, indent=2))
    table = Table(title=f"arithmetic reasoning RL, {len(held_out)} held-out tasks (greedy)")
    for column in ("metric", "base model", "after SFT warm-up", "after GRPO", "GRPO change"):
        table.add_column(column)
    accuracy = [f"{results['accuracy'][stage]:.1%} {_span(intervals[stage])}"
                for stage in ("base", "after_sft", "after_grpo")]
    change = intervals["grpo_change"]
    table.add_row("exact answer", *accuracy, f"{change['value'] * 100:+.1f} pp {_span(change, pp=True)}")
    row = results["format"]
    table.add_row("<think>/<answer> format", f"{row['base']:.1%}", f"{row['after_sft']:.1%}",
                  f"{row['after_grpo']:.1%}", f"{(row['after_grpo'] - row['after_sft']) * 100:+.1f} pp")
    console.print(table)
    console.print("[95% intervals: Wilson per accuracy; the change: paired bootstrap over tasks, "
                  f"p = {change['p_value']:.3f} for no change]")
    console.print(f"curves: {results['curve']}")
    return results


def accuracy_intervals(rows_by_stage: dict[str, list[dict]], *, resamples: int = 2000, seed: int = 0) -> dict:
    """95% intervals for held-out accuracy: Wilson's for each stage's rate (``{"value", "low",
    "high", "n"}``), and for the GRPO change (after_grpo - after_sft) a paired percentile bootstrap
    over tasks with its p-value for no change. Rows are ``answer_tasks`` rows (``id``, ``math_answer``).

    Pairing matters: most tasks are right (or wrong) both before and after, and resampling tasks
    together cancels that shared difficulty; two independent Wilson intervals would overlap for
    a change the paired interval resolves.
    """
    intervals: dict = {}
    for stage, rows in rows_by_stage.items():
        right = sum(1 for row in rows if row["math_answer"] == 1.0)
        low, high = wilson_interval(right, len(rows))
        intervals[stage] = {"value": right / max(len(rows), 1), "low": low, "high": high, "n": len(rows)}
    before, after = (_accuracy_result(rows_by_stage[stage]) for stage in ("after_sft", "after_grpo"))
    interval, paired, p_value = delta_test(before, after, resamples=resamples, seed=seed)
    if not paired:
        raise ValueError("the held-out answers before and after GRPO are not the same tasks")
    intervals["grpo_change"] = {"value": after.value - before.value, "low": interval.low, "high": interval.high,
                                "p_value": p_value, "n": len(before.items)}
    return intervals


def _accuracy_result(rows: list[dict]) -> MetricResult:
    items = [{"id": row["id"], "right": float(row["math_answer"] == 1.0)} for row in rows]
    return MetricResult("accuracy", sum(i["right"] for i in items) / max(len(items), 1), items,
                        statistic=lambda chosen: sum(i["right"] for i in chosen) / max(len(chosen), 1))


def _span(interval: dict, pp: bool = False) -> str:
    if pp:
        return f"[{interval['low'] * 100:+.1f}, {interval['high'] * 100:+.1f}]"
    return f"[{interval['low']:.0%}, {interval['high']:.0%}]"


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _first_lines(path: str, count: int, run_dir: Path) -> str:
    run_dir.mkdir(parents=True, exist_ok=True)
    subset = run_dir / "heldout-subset.jsonl"
    lines = Path(path).read_text().splitlines()[:count]
    subset.write_text("\n".join(lines) + "\n")
    return str(subset)
