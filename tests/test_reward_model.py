"""Reward model end to end on a tiny model: learns a planted preference, keeps ranking groups in
one batch, saves a checkpoint that Hugging Face loads with the same scores, rejects bad data."""

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tether.algorithms.reward import (
    REPORT_FILE,
    RewardModelConfig,
    collate_comparisons,
    encode_comparisons,
    evaluate_comparisons,
    load_reward_model,
    train_reward_model,
)
from tether.algorithms.reward import _quiet_transformers as quiet_transformers
from tether.config import load_config
from tether.engine import read_metrics
from tether.engine.grouped_batches import grouped_batches, groups_by_key
from tether.errors import ConfigError, DataValidationError
from tether.models.tiny import save_tiny_llama
from tether.rewards.reward_model import RewardModelScorer

WORDS = ["fox", "dog", "answer", "number", "process", "question", "today", "step", "help", "safer"]


def response(rng, marker=None):
    words = [rng.choice(WORDS) for _ in range(5)]
    if marker:
        words[rng.randrange(5)] = marker
    return " ".join(words) + "."


def write_pairs(path, seed, count, **extra):
    """Learnable: the chosen response holds the word 'thanks' somewhere, the rejected does not."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(count):
            row = {"prompt": f"Tell me about {rng.choice(WORDS)} {i}.", "chosen": response(rng, "thanks"),
                   "rejected": response(rng), **extra}
            handle.write(json.dumps(row) + "\n")


@pytest.fixture
def job(tmp_path):
    save_tiny_llama(tmp_path / "model")
    write_pairs(tmp_path / "train.jsonl", seed=0, count=48)
    write_pairs(tmp_path / "heldout.jsonl", seed=1, count=24)
    return tmp_path


def config_for(job, *overrides):
    return load_config(RewardModelConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'train.jsonl'}",
        f"data.eval={job / 'heldout.jsonl'}", f"train.output_dir={job / 'runs'}", "data.max_length=64",
        "train.batch_size=8", "train.max_steps=16", "optim.lr=1e-2", "optim.schedule=constant", "train.progress=false",
        "train.tensorboard=false", "train.bf16=false", *overrides])


def test_training_learns_the_planted_preference_and_reloads_with_the_same_scores(job):
    config = config_for(job, "train.run_name=full")
    final = train_reward_model(config)
    report = json.loads((config.run_dir() / REPORT_FILE).read_text())
    before, after = report["held_out_before"], report["held_out_after"]
    assert before["accuracy"] < 0.8
    assert after["accuracy"] == 1.0
    assert after["loss"] < before["loss"] - 0.3
    assert 0.0 <= after["ece"] <= 1.0 and after["reliability"]
    history = read_metrics(config.run_dir())
    assert history[-1]["eval/accuracy"] == 1.0 and "eval/ece" in history[-1]

    # A plain Hugging Face checkpoint: AutoModelForSequenceClassification scores the held-out
    # pairs exactly as the trained model did in memory (the report's numbers).
    reloaded = AutoModelForSequenceClassification.from_pretrained(final, local_files_only=True).eval()
    assert reloaded.config.num_labels == 1 and reloaded.config.pad_token_id is not None
    tokenizer = AutoTokenizer.from_pretrained(final)
    data = encode_comparisons(str(job / "heldout.jsonl"), tokenizer, config)
    again = evaluate_comparisons(reloaded, data, tokenizer.pad_token_id, config)
    for key in ("loss", "accuracy", "margin", "ece", "reward_mean"):
        assert again[key] == pytest.approx(after[key], abs=1e-5), key
    batch = collate_comparisons(data, [0, 1, 2], tokenizer.pad_token_id)  # chosen 0-2, rejected 0-2
    with torch.no_grad():
        hf_scores = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    assert (hf_scores[:3] > hf_scores[3:]).all()

    # The scorer (the reward function PPO/GRPO call) applies the chat template as training did.
    rows = [json.loads(line) for line in (job / "heldout.jsonl").read_text().splitlines()[:3]]
    scorer = RewardModelScorer(final, batch_size=2)
    scores = scorer([r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
    torch.testing.assert_close(torch.tensor(scores), hf_scores, atol=1e-5, rtol=1e-5)


def test_grouped_batches_keep_every_group_whole():
    sizes = [6, 1, 3, 10, 2, 6, 1, 4, 3, 3]
    groups, start = [], 0
    for size in sizes:
        groups.append(list(range(start, start + size)))
        start += size
    batches = grouped_batches(groups, batch_size=8, seed=3)
    assert sorted(i for batch in batches for i in batch) == list(range(start))  # each index once
    home = {i: b for b, batch in enumerate(batches) for i in batch}
    assert all(len({home[i] for i in group}) == 1 for group in groups)  # a group never splits
    assert [len(b) for b in batches if len(b) > 8] == [10]  # only the oversize group overflows
    assert grouped_batches(groups, 8, seed=3) == batches
    assert grouped_batches(groups, 8, seed=4) != batches
    assert groups_by_key(["a", "b", "a", "c", "b"]) == [[0, 2], [1, 4], [3]]


def write_rankings(path, count, seed):
    """Four responses per prompt ranked by how many times they say 'thanks' (3 = best); one tie."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(count):
            responses = [" ".join([rng.choice(WORDS)] * 2 + ["thanks"] * k) + "." for k in (3, 2, 1, 0)]
            ranks = [1, 2, 3, 3] if i == 0 else [1, 2, 3, 4]
            handle.write(json.dumps({"id": f"r{i}", "prompt": f"Answer {i}.", "responses": responses,
                                     "ranks": ranks}) + "\n")


def test_rankings_train_as_grouped_pairs_with_lora_save_merged_and_resume_exactly(job):
    write_rankings(job / "rank_train.jsonl", 8, seed=0)
    write_rankings(job / "rank_eval.jsonl", 4, seed=1)
    config = config_for(job, "train.run_name=rank", f"data.train={job / 'rank_train.jsonl'}",
                        f"data.eval={job / 'rank_eval.jsonl'}", "model.lora.r=4", "train.batch_size=16",
                        "optim.lr=5e-3", "train.max_steps=8", "train.save_every=4")
    model, tokenizer = load_reward_model(config.model)
    data = encode_comparisons(config.data.train, tokenizer, config)
    assert len(data) == 5 + 7 * 6  # the tied ranking gives 5 pairs, the others 4-choose-2 = 6
    assert sorted(len(g) for g in data.groups) == [5] + [6] * 7
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in name for name in trainable) and any("score" in name for name in trainable)
    assert not any("embed_tokens" in name for name in trainable)

    final = train_reward_model(config)
    assert not (final / "adapter_config.json").exists()  # merged: a plain checkpoint
    reloaded = AutoModelForSequenceClassification.from_pretrained(final, local_files_only=True)
    assert type(reloaded).__name__ == "LlamaForSequenceClassification"
    report = json.loads((config.run_dir() / REPORT_FILE).read_text())
    assert report["train_pairs"] == 47 and report["train_groups"] == 8
    assert report["held_out_after"]["loss"] < report["held_out_before"]["loss"] - 0.2
    first = load_file(final / "model.safetensors")

    # Kill-and-resume: drop the last checkpoint, resume from step 4, get the same weights.
    shutil.rmtree(config.run_dir() / "checkpoints" / "checkpoint-0000008")
    resumed = train_reward_model(config.model_copy(update={"train": config.train.model_copy(update={"resume": True})}))
    assert json.loads((config.run_dir() / REPORT_FILE).read_text())["resumed_from"] == 4
    second = load_file(resumed / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_bad_data_is_reported_by_file_line_and_field(job):
    bad = job / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello."}) + "\n"
                   + json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}) + "\n")
    config = config_for(job, f"data.train={bad}")
    model, tokenizer = load_reward_model(config.model)
    with pytest.raises(DataValidationError) as error:
        encode_comparisons(str(bad), tokenizer, config)
    assert f"{bad}:1: field 'rejected': missing required field" in str(error.value)

    margins = job / "margins.jsonl"
    margins.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "No.", "margin": 1.5}) + "\n"
                       + json.dumps({"prompt": "Yo", "chosen": "Hey.", "rejected": "No.", "margin": "big"}) + "\n")
    config = config_for(job, f"data.train={margins}", "reward.margin_column=margin")
    with pytest.raises(DataValidationError) as error:
        encode_comparisons(str(margins), tokenizer, config)
    assert f"{margins}:2: field 'margin': expected a finite number, got string 'big'" in str(error.value)

    margins.write_text(margins.read_text().replace('"big"', "0.5"))
    data = encode_comparisons(str(margins), tokenizer, config)
    assert data.margins.tolist() == [1.5, 0.5]
    assert collate_comparisons(data, [1, 0], tokenizer.pad_token_id)["margin"].tolist() == [0.5, 1.5]

    write_rankings(job / "ranks.jsonl", 2, seed=0)
    with pytest.raises(ConfigError, match="margin_column applies to preference pairs"):
        encode_comparisons(str(job / "ranks.jsonl"), tokenizer, config)
    with pytest.raises(ConfigError, match="padded, not packed"):
        config_for(job, "data.batching=pack")
    with pytest.raises(ConfigError, match="not a reward model"):
        RewardModelScorer(job / "model")


def test_grpo_runs_with_a_reward_model_reward(job):
    from transformers import AutoModelForSequenceClassification as Classifier

    from tether.algorithms.grpo import GRPOConfig, train_grpo

    # An untrained reward model: the tiny backbone with a fresh scalar head.
    with quiet_transformers():
        scorer_model = Classifier.from_pretrained(job / "model", num_labels=1, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(job / "model")
    scorer_model.config.pad_token_id = tokenizer.pad_token_id
    scorer_model.save_pretrained(job / "rm")
    tokenizer.save_pretrained(job / "rm")
    (job / "tasks.jsonl").write_text("".join(json.dumps({"prompt": f"Say {i}.", "answer": str(i)}) + "\n"
                                             for i in range(4)))
    config = load_config(GRPOConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'tasks.jsonl'}", f"train.output_dir={job / 'runs'}",
        "train.run_name=grpo-rm", "train.progress=false", "train.bf16=false", "train.tensorboard=false",
        "train.max_steps=1",
        f"grpo.rewards=[{{name: 'reward_model:{job / 'model'}'}}]", "grpo.num_generations=4",
        "grpo.prompts_per_step=2", "grpo.max_new_tokens=6"])
    with pytest.raises(ConfigError, match="not a reward model"):
        train_grpo(config)  # the policy checkpoint is a causal LM, not a reward model
    config = config.model_copy(update={"train": config.train.model_copy(update={"run_name": "grpo-rm2"})})
    config.grpo.rewards[0].name = f"reward_model:{job / 'rm'}"
    train_grpo(config)
    history = read_metrics(config.run_dir())
    step = next(row for row in history if row["step"] == 1)
    assert "rewards/reward_model/mean" in step and step["rewards/reward_model/std"] > 0
