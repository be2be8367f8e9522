"""The difficulty filter: per-task pass rates of the starting policy, and the frontier tasks kept."""

import json

import pytest
import torch

from tether.data import VerifiableRecord
from tether.rewards.base import RewardSpec, completion_text
from tether.tasks.arithmetic import write_splits
from tether.tasks.difficulty import at_frontier, main, pass_rates


def scripted_reward(prompts, completions, answer, **_):
    """Reads the task's ``answer`` column: "always" scores 1, "never" 0, "coin" the completion's
    length parity (random text from a random model: sometimes right, sometimes wrong). Completions
    of conversational prompts arrive as message lists, as in TRL."""
    scores = {"always": lambda text: 1.0, "never": lambda text: 0.0, "coin": lambda text: float(len(text) % 2 == 0)}
    return [scores[kind](completion_text(text)) for kind, text in zip(answer, completions)]


@pytest.mark.parametrize("bf16", [False, True])
def test_each_task_gets_the_share_of_its_own_samples_and_the_frontier_keeps_the_mixed_ones(tiny, bf16):
    model, tokenizer = tiny
    kinds = ["always", "coin", "never", "coin", "always"]
    records = [VerifiableRecord(prompt=[{"role": "user", "content": f"task {i}"}], answer=kind, id=str(i))
               for i, kind in enumerate(kinds)]
    specs = [RewardSpec("scripted", scripted_reward)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        rates = pass_rates(model, tokenizer, records, specs, samples=8, temperature=1.0, max_new_tokens=8,
                           reward="scripted", batch_prompts=2)
    # the samples of task i are rows i*K..(i+1)*K-1: the scripted tasks come back in their places
    assert [rates[i] for i in (0, 2, 4)] == [1.0, 0.0, 1.0]
    assert all(0.0 < rates[i] < 1.0 for i in (1, 3)), rates
    assert all(rate * 8 == int(rate * 8) for rate in rates)  # shares of 8 samples
    assert at_frontier(rates) == [1, 3]


def test_the_command_writes_the_kept_rows_unchanged_and_every_rate(tmp_path):
    from tether.models.tiny import save_tiny_llama

    model_dir = save_tiny_llama(tmp_path / "model")
    tasks = write_splits(tmp_path / "tasks", train=6, heldout=3, sft=3)["train"]
    out = tmp_path / "frontier.jsonl"
    summary = main([str(model_dir), str(tasks), str(out), "--limit", "4", "--samples", "2", "--max-new-tokens", "4"])
    rates = [json.loads(line) for line in out.with_suffix(".rates.jsonl").read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in tasks.read_text().splitlines()]
    assert [row["id"] for row in rates] == ids[:4]
    # a random model never answers arithmetic: every task is all-wrong, none is kept
    assert summary == {"measured": 4, "kept": 0, "all_right": 0, "all_wrong": 4, "mean_pass_rate": 0.0}
    assert out.read_text() == ""
