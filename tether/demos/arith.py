"""``tether demo arith``: reasoning RL on the bundled SmolLM2-135M-Instruct.

1. SFT warm-up on 64 worked answers (recipes/arith-sft.yaml): the base model never writes the
   <think>/<answer> format by itself, so RL would have no signal to start from.
2. GRPO with verifiable rewards (recipes/arith-grpo.yaml): exact answers checked by
   math-verify, plus a format reward; held-out accuracy measured before and during training.
3. A table of held-out accuracy (base, after SFT, after GRPO), ``curves.png`` in the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.table import Table

from tether.algorithms.grpo import GRPOConfig, evaluate_tasks, train_grpo
from tether.algorithms.sft import SFTConfig, train_sft
from tether.config import load_config
from tether.data import load_records
from tether.engine import console, read_metrics
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
        before = evaluate_tasks(base, tokenizer, held_out, specs, grpo_config)
    del base
    train_sft(sft_config)

    console.rule("2/3  GRPO with verifiable rewards")
    train_grpo(grpo_config)

    console.rule("3/3  held-out results")
    history = [row for row in read_metrics(grpo_config.run_dir()) if "eval/math_answer" in row]
    after_sft, after_grpo = history[0], history[-1]
    results = {
        "accuracy": {"base": before["math_answer"], "after_sft": after_sft["eval/math_answer"],
                     "after_grpo": after_grpo["eval/math_answer"]},
        "format": {"base": before["think_answer_format"], "after_sft": after_sft["eval/think_answer_format"],
                   "after_grpo": after_grpo["eval/think_answer_format"]},
        "num_heldout": len(held_out), "grpo_steps": after_grpo["step"],
        "curve": str(grpo_config.run_dir() / "curves.png"),
    }
    (grpo_config.run_dir() / "demo_results.json").write_text(json.dumps(results, indent=2))
    table = Table(title=f"arithmetic reasoning RL, {len(held_out)} held-out tasks (greedy)")
    for column in ("metric", "base model", "after SFT warm-up", "after GRPO", "GRPO change"):
        table.add_column(column)
    for key, label in (("accuracy", "exact answer"), ("format", "<think>/<answer> format")):
        row = results[key]
        table.add_row(label, f"{row['base']:.1%}", f"{row['after_sft']:.1%}", f"{row['after_grpo']:.1%}",
                      f"{(row['after_grpo'] - row['after_sft']) * 100:+.1f} pp")
    console.print(table)
    console.print(f"curves: {results['curve']}")
    return results


def _first_lines(path: str, count: int, run_dir: Path) -> str:
    run_dir.mkdir(parents=True, exist_ok=True)
    subset = run_dir / "heldout-subset.jsonl"
    lines = Path(path).read_text().splitlines()[:count]
    subset.write_text("\n".join(lines) + "\n")
    return str(subset)
