"""LoRA on top of a LoRA run's output: merged first (default) or trained further, never nested.

Nested adapters used to save doubled key prefixes with lm_head as a target and reload as the
untouched base model, so every step of the second run was silently lost.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tether.algorithms.grpo import GRPOConfig, train_grpo
from tether.algorithms.sft import SFTConfig, train_sft
from tether.config import load_config
from tether.engine import distributed, read_metrics
from tether.models import load_model
from tether.models.tiny import save_tiny_llama

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 250], [7, 7, 200, 31, 8, 1]])  # (B=2, T=6)


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(TOKENS).logits  # (B, T, V)


@pytest.fixture
def job(tmp_path):
    save_tiny_llama(tmp_path / "base")
    with (tmp_path / "sft.jsonl").open("w") as handle:
        for i in range(16):
            handle.write(json.dumps({"prompt": f"What is {i} plus {i}?",
                                     "completion": f"The answer is {2 * i}."}) + "\n")
    return tmp_path


def sft(job, run_name, model_path, *overrides):
    config = load_config(SFTConfig, None, [
        f"model.path={model_path}", f"data.train={job / 'sft.jsonl'}",
        f"train.output_dir={job / 'runs'}", f"train.run_name={run_name}", "train.batch_size=4",
        "train.max_steps=4", "optim.lr=1e-2", "train.progress=false", "train.tensorboard=false",
        "train.bf16=false", "model.lora.r=4", "model.lora.alpha=8", *overrides])
    return train_sft(config)


@pytest.fixture
def final_logits(monkeypatch):
    """Records the logits of each model as it is handed to save_final_model (the trained
    weights at the end of training), by the folder it is saved to."""
    seen, save = {}, distributed.save_final_model

    def recording_save(model, tokenizer, directory, **kwargs):
        was_training = model.training
        seen[directory.name if directory.name != "final" else directory.parent.name] = logits_of(model)
        model.train(was_training)
        return save(model, tokenizer, directory, **kwargs)

    monkeypatch.setattr(distributed, "save_final_model", recording_save)
    return seen


@pytest.mark.parametrize("mode", ["merge", "continue"])
def test_lora_on_a_lora_output_reloads_to_the_trained_weights(job, final_logits, mode):
    first = sft(job, "first", job / "base")
    second = sft(job, "second", first, f"model.lora_on_adapter={mode}")
    trained = final_logits["second"]
    # Training moved the weights, so reloading the start instead would fail the checks below.
    assert (trained - final_logits["first"]).abs().max() > 1e-3

    tethered, _ = load_model(second)
    torch.testing.assert_close(logits_of(tethered), trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_of(AutoPeftModelForCausalLM.from_pretrained(second)), trained,
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(second)), trained,
                               rtol=0, atol=1e-5)

    keys = load_file(str(second / "adapter_model.safetensors")).keys()
    assert keys and all(key.startswith("base_model.model.model.layers.") for key in keys), sorted(keys)[:3]
    assert not any("base_model.model.base_model.model" in key or "lm_head" in key for key in keys)
    adapter_config = json.loads((second / "adapter_config.json").read_text())
    assert "lm_head" not in adapter_config["target_modules"]
    if mode == "merge":
        merged_base = (job / "runs" / "second" / "merged_base").resolve()
        assert adapter_config["base_model_name_or_path"] == str(merged_base)
        assert adapter_config["r"] == 4
        card = (second / "README.md").read_text()
        assert (f"from `{first}`, a LoRA adapter on `{(job / 'base').resolve()}` that was merged into "
                "that base first; the merged model is the base model below." in card)
        assert f"| base model | `{merged_base}` |" in card
        # The merged base is the first run's model: the second run starts where the first ended.
        merged, _ = load_model(merged_base)
        torch.testing.assert_close(logits_of(merged), final_logits["first"], rtol=0, atol=1e-5)
        # The run folder holds both, so it can move: the adapter finds merged_base beside it.
        moved = shutil.move(job / "runs" / "second", job / "elsewhere")
        torch.testing.assert_close(logits_of(load_model(Path(moved) / "final")[0]), trained, rtol=0, atol=1e-5)
    else:
        assert adapter_config["base_model_name_or_path"] == str((job / "base").resolve())
        assert not (job / "runs" / "second" / "merged_base").exists()
        assert f"; the adapter of `{first}`, trained further |" in (second / "README.md").read_text()


def test_final_readme_is_a_model_card_of_the_run(job):
    final = sft(job, "card", job / "base")
    card = (final / "README.md").read_text()
    base = str((job / "base").resolve())
    assert card.startswith(f'---\nbase_model: "{base}"\nlibrary_name: "peft"\n')
    assert "[More Information Needed]" not in card  # peft's empty template is gone
    assert f"| base model | `{base}` |" in card
    assert ("| method | SFT, LoRA r=4, alpha=8, dropout=0, targets down_proj, gate_proj, k_proj, o_proj, "
            "q_proj, up_proj, v_proj |") in card
    assert f"| training data | `{job / 'sft.jsonl'}` |" in card
    assert "| optimizer steps | 4 (batch 4 x 1 accumulated) |" in card
    assert "| precision | float32 |" in card
    assert "| loss | " in card and "(step 1) | " in card and "(step 4) |" in card


def digit_reward(prompts, completions, **_):
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


@pytest.mark.parametrize("mode", ["merge", "continue"])
def test_grpo_on_a_lora_output_starts_at_its_reference(job, mode):
    """KL to the reference is 0 before the first update in both modes: when continuing, the
    adapter-off model is the older base, so a frozen copy of the start is the reference."""
    first = sft(job, "first", job / "base")
    with (job / "tasks.jsonl").open("w") as handle:
        for i in range(4):
            handle.write(json.dumps({"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n")
    config = load_config(GRPOConfig, None, [
        f"model.path={first}", f"data.train={job / 'tasks.jsonl'}", f"train.output_dir={job / 'runs'}",
        "train.run_name=grpo", "train.progress=false", "train.tensorboard=false", "train.bf16=false",
        "grpo.rewards=[{name: 'test_lora_on_lora:digit_reward'}]", "grpo.num_generations=4",
        "grpo.prompts_per_step=2", "grpo.max_new_tokens=6", "grpo.beta=0.1", "train.max_steps=1",
        "model.lora.r=4", f"model.lora_on_adapter={mode}"])
    train_grpo(config)
    [step] = [row for row in read_metrics(config.run_dir()) if "kl" in row]
    assert abs(step["kl"]) < 1e-5, step["kl"]
