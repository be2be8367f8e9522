"""``tether demo arith-tools``: tool use learned by the bundled SmolLM2-135M-Instruct.

1. The base model on the held-out arithmetic tasks, answering directly (no tool) and in the
   ``arithmetic`` environment (a sandboxed calculator it may call, docs/agents.md).
2. SFT warm-up on 64 worked calculator episodes (recipes/arith-tools-sft.yaml): the model has never
   seen the <tool_call> format.
3. GRPO on multi-turn episodes (recipes/arith-tools-grpo.yaml): exact final answer as the reward.
4. A table of held-out accuracy without and with the tool; every episode is in
   ``runs/arith-tools-grpo/trajectories.jsonl``.

Compare with ``tether demo arith`` (the same tasks, SFT + GRPO without a tool).
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
from tether.demos.arith import _first_lines
from tether.engine import console
from tether.envs.arithmetic import tool_warmup_messages
from tether.models import load_model
from tether.rewards.resolve import reward_specs

RECIPES = Path(__file__).parent.parent / "recipes"
SFT_SOURCE = Path(__file__).parent.parent / "resources" / "arith" / "sft.jsonl"


def write_tool_warmup(path: Path) -> Path:
    """The 64 warm-up questions of the arith job (none held out) as calculator episodes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for line in SFT_SOURCE.read_text().splitlines():
            row = json.loads(line)
            answer = row["messages"][-1]["content"].split("<answer>")[1].split("</answer>")[0]
            task = {"prompt": row["messages"][:-1], "answer": answer}
            handle.write(json.dumps({"id": row["id"], "messages": tool_warmup_messages(task)}) + "\n")
    return path


def held_out_accuracy(model, tokenizer, held_out, config: GRPOConfig) -> dict[str, float]:
    """Greedy accuracy answering directly, and in the environment (tool calls per task too)."""
    plain = config.model_copy(deep=True)
    plain.grpo.environment = None
    specs = reward_specs(plain.grpo.rewards)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(config.train.bf16)):
        without = evaluate_tasks(model, tokenizer, held_out, specs, plain)
        with_tool = evaluate_tasks(model, tokenizer, held_out, specs, config)
    return {"without_tool": without["math_answer"], "with_tool": with_tool["environment_return"],
            "tool_calls": with_tool["tool_calls"]}


def run_arith_tools_demo(overrides: list[str], steps: int | None = None, eval_limit: int | None = None) -> dict:
    shared = [o for o in overrides if o.startswith(("train.output_dir=", "train.progress=", "train.threads=",
                                                     "train.seed=", "train.bf16="))]
    grpo_config = load_config(GRPOConfig, RECIPES / "arith-tools-grpo.yaml",
                              list(overrides) + ([f"train.max_steps={steps}"] if steps else []))
    sft_config = load_config(SFTConfig, RECIPES / "arith-tools-sft.yaml", shared)
    warmup_file = Path(sft_config.train.output_dir) / "arith-tools-data" / "tool_sft.jsonl"
    sft_config.data.train = str(write_tool_warmup(warmup_file))
    grpo_config.model.path = str(sft_config.run_dir() / "final")
    if eval_limit:  # GRPO's own evaluations read data.eval too
        grpo_config.data.eval = _first_lines(grpo_config.data.eval, eval_limit, grpo_config.run_dir())
    held_out = load_records(grpo_config.data.eval, "verifiable")

    results: dict = {"num_heldout": len(held_out)}
    console.rule("1/4  the base model, without and with the calculator")
    base, tokenizer = load_model(sft_config.model.path)
    results["base"] = held_out_accuracy(base, tokenizer, held_out, grpo_config)
    del base

    console.rule("2/4  SFT warm-up on calculator episodes")
    train_sft(sft_config)
    warm, tokenizer = load_model(grpo_config.model.path)
    results["after_sft"] = held_out_accuracy(warm, tokenizer, held_out, grpo_config)
    del warm

    console.rule("3/4  GRPO on multi-turn episodes")
    final = train_grpo(grpo_config)
    trained, tokenizer = load_model(final)
    results["after_grpo"] = held_out_accuracy(trained, tokenizer, held_out, grpo_config)
    results["grpo_steps"] = grpo_config.train.max_steps

    console.rule("4/4  held-out results")
    (grpo_config.run_dir() / "demo_results.json").write_text(json.dumps(results, indent=2))
    table = Table(title=f"arithmetic with a calculator tool, {len(held_out)} held-out tasks (greedy)")
    for column in ("model", "accuracy, no tool", "accuracy, with tool", "tool calls per task"):
        table.add_column(column)
    for key, label in (("base", "base"), ("after_sft", "after SFT warm-up"), ("after_grpo", "after GRPO")):
        row = results[key]
        table.add_row(label, f"{row['without_tool']:.1%}", f"{row['with_tool']:.1%}", f"{row['tool_calls']:.2f}")
    console.print(table)
    return results
