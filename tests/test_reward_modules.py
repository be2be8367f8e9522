"""A reward module beside the recipe, or in the working directory, imports without PYTHONPATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from tether.models.tiny import save_tiny_llama

REWARD_MODULE = '''
def count_ones(completions, **kwargs):
    return [float(text.count("1")) for text in completions]
'''
REPO = Path(tether.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward-modules")
    save_tiny_llama(root / "model")
    (root / "tasks.jsonl").write_text("".join(json.dumps({"prompt": f"Say 1 ({i})."}) + "\n" for i in range(4)))
    return root


def write_recipe(folder: Path, files: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""
model: {{path: {files / 'model'}}}
data: {{train: {files / 'tasks.jsonl'}}}
train: {{output_dir: {files / 'runs'}, max_steps: 1, progress: false, tensorboard: false, bf16: false}}
grpo: {{rewards: [{{name: "myrewards:count_ones"}}], num_generations: 2, prompts_per_step: 2, max_new_tokens: 4}}
""")
    return recipe


def tether_train(recipe: Path, cwd: Path, run_name: str) -> subprocess.CompletedProcess:
    # -P: the working directory is not put on sys.path, as with the installed `tether` command.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-P", "-m", "tether.cli", "train", "grpo", "--config", str(recipe),
                           f"train.run_name={run_name}"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_reward_module_beside_the_recipe_imports_from_another_working_directory(files, tmp_path):
    recipe = write_recipe(tmp_path / "recipes", files)
    (recipe.parent / "myrewards.py").write_text(REWARD_MODULE)
    (tmp_path / "elsewhere").mkdir()
    result = tether_train(recipe, tmp_path / "elsewhere", "beside")
    assert result.returncode == 0, result.stderr
    assert any("rewards/count_ones/mean" in json.loads(line)
               for line in (files / "runs" / "beside" / "metrics.jsonl").read_text().splitlines())


def test_a_reward_module_in_the_working_directory_imports(files, tmp_path):
    recipe = write_recipe(tmp_path / "recipes", files)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "myrewards.py").write_text(REWARD_MODULE)
    result = tether_train(recipe, tmp_path / "work", "cwd")
    assert result.returncode == 0, result.stderr


def test_a_missing_reward_module_says_where_it_looked(files, tmp_path):
    recipe = write_recipe(tmp_path / "recipes", files)
    result = tether_train(recipe, tmp_path, "missing")
    assert result.returncode == 2
    assert "cannot import reward 'myrewards:count_ones': No module named 'myrewards' (looked on the " \
           "Python path, in the working directory and beside the recipe)" in result.stderr
    assert not (files / "runs" / "missing").exists()
