"""The recipes shipped in the package: each parses under its algorithm's config class, and the
`tether recipes` command lists, copies and runs them from outside a clone."""

import importlib
import json
import subprocess
import sys

import pytest

from tether.cli import main
from tether.commands.recipes import ALGORITHMS, describe
from tether.commands.train import TRAINERS
from tether.config import RECIPES_DIR, load_config
from tether.models.tiny import save_tiny_llama


def test_every_recipe_names_its_algorithm():
    assert sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) == sorted(ALGORITHMS)


@pytest.mark.parametrize("bf16_is_fast", [False, True])  # the recipes say bf16: auto
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_recipe_loads(name, bf16_is_fast, monkeypatch):
    monkeypatch.setattr("tether.hardware.bf16_is_fast", lambda: bf16_is_fast)
    module_name, class_name = TRAINERS[ALGORITHMS[name]][0].split(":")
    config_class = getattr(importlib.import_module(module_name), class_name)
    config = load_config(config_class, f"tether:recipes/{name}.yaml", [])
    assert config.train.run_name
    trainings = [config.sft, config.dpo] if name == "cai" else [config]  # CAI trains twice
    assert all(training.train.bf16 is bf16_is_fast for training in trainings)
    assert describe(RECIPES_DIR / f"{name}.yaml"), f"{name}.yaml has no opening comment"


def test_recipes_list_names_each_recipe_with_its_summary(capsys):
    assert main(["recipes", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["sft-demo", "sft"] and "LoRA SFT" in line for line in lines)
    assert any(line.startswith("safety-dpo") and line.endswith(
        "safety alignment of SmolLM2-135M-Instruct with LoRA DPO") for line in lines)
    assert sum(1 for line in lines if line.split()[:1] and line.split()[0] in ALGORITHMS) == len(ALGORITHMS)


def test_recipes_cp_copies_refuses_to_overwrite_and_names_the_closest(tmp_path, capsys):
    assert main(["recipes", "cp", "safety-dpo", str(tmp_path)]) == 0
    copied = tmp_path / "safety-dpo.yaml"
    assert copied.read_text() == (RECIPES_DIR / "safety-dpo.yaml").read_text()
    assert main(["recipes", "cp", "safety-dpo", str(copied)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["recipes", "cp", "safety-dpo.yaml", str(copied), "--force"]) == 0
    assert main(["recipes", "cp", "safty-dpo", str(tmp_path / "x.yaml")]) == 2
    assert "did you mean 'safety-dpo'?" in capsys.readouterr().err


def test_a_bundled_recipe_trains_from_a_folder_outside_the_clone(tmp_path):
    """`--config tether:recipes/sft-demo.yaml` (and its `tether:` data path) from a bare cwd; the
    LoRA recipe also checks that peft's FutureWarning (is_gradient_checkpointing) stays quiet."""
    save_tiny_llama(tmp_path / "model")
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli", "train", "sft", "--config", "tether:recipes/sft-demo.yaml",
         f"model.path={tmp_path / 'model'}", "train.max_steps=1", "train.batch_size=2",
         "train.bf16=false", "train.progress=false", "train.tensorboard=false", "train.threads=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "sft-demo" / "final" / "adapter_config.json").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "runs" / "sft-demo" / "metrics.jsonl").open()]
    assert metrics[0]["step"] == 1
    assert "FutureWarning" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
