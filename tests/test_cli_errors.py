"""Mistakes a new user makes end in one `error:` line and exit code 2, never a traceback."""

import json
import shutil
import subprocess
import sys

import pytest

from tether.cli import main
from tether.models.tiny import save_tiny_llama


@pytest.fixture
def tiny_model(tmp_path):
    save_tiny_llama(tmp_path / "model")
    return tmp_path / "model"


def sft(tmp_path, *overrides):
    return main(["train", "sft", f"train.output_dir={tmp_path / 'runs'}", "train.bf16=false",
                 "train.progress=false", "train.tensorboard=false", "train.max_steps=1", *overrides])


def test_a_model_folder_without_weights(tmp_path, tiny_model, capsys):
    (tmp_path / "sft.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    copy = tmp_path / "copied"
    shutil.copytree(tiny_model, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    assert sft(tmp_path, f"model.path={copy}", f"data.train={tmp_path / 'sft.jsonl'}") == 2
    error = capsys.readouterr().err
    assert f"error: {copy} has config.json but no model weights (model.safetensors or" in error
    assert "it holds only: " in error and "tokenizer.json" in error


@pytest.mark.parametrize("name, text", [
    ("rows.json", '[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "c", "completion": "d"}\n]\n'),
    ("rows.jsonl", '[{"prompt": "a", "completion": "b"}]'),
])
def test_a_json_array_is_named_as_such_with_how_to_convert_it(tmp_path, tiny_model, capsys, name, text):
    (tmp_path / name).write_text(text)
    assert sft(tmp_path, f"model.path={tiny_model}", f"data.train={tmp_path / name}") == 2
    error = capsys.readouterr().err
    assert f"error: {tmp_path / name}: the file holds a JSON array" in error
    assert "not JSONL (one JSON object per line)" in error
    assert f"{tmp_path / 'rows'}.jsonl" in error  # the conversion command's output file


def test_label_init_into_a_missing_folder(tmp_path, capsys):
    database = tmp_path / "no" / "such" / "label.db"
    assert main(["label", "init", "--db", str(database)]) == 2
    error = capsys.readouterr().err
    assert f"error: cannot create the database {database}: the folder {database.parent} does not exist" in error
    assert main(["label", "init", "--db", str(tmp_path / "label.db")]) == 0


def test_an_unreachable_label_database(capsys):
    assert main(["label", "init", "--db", "postgresql+psycopg://user:secret@127.0.0.1:1/none"]) == 2
    error = capsys.readouterr().err
    assert "error: cannot open the database postgresql+psycopg://user:***@127.0.0.1:1/none" in error
    assert "secret" not in error


def test_a_bad_command_line_override_is_not_blamed_on_the_recipe(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  train: a.jsonl\n")
    assert main(["train", "sft", "--config", str(recipe), "optim.lr=-1", "train.bf16=false"]) == 2
    error = capsys.readouterr().err
    assert "command line override optim.lr=-1: 'optim.lr': Input should be greater than 0" in error
    assert str(recipe) not in error


def test_a_run_name_that_leaves_the_output_dir(tmp_path, capsys):
    assert sft(tmp_path, "data.train=a.jsonl", "train.run_name=../../elsewhere") == 2
    assert "'train.run_name': must be a folder name inside train.output_dir" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_warnings_read_as_one_plain_line(tmp_path):
    """A huge learning rate warns as `warning: ...` (no pydantic file and line), before the error."""
    result = subprocess.run([sys.executable, "-m", "tether.cli", "train", "sft", "data.train=a.jsonl",
                             "optim.lr=3", "train.run_name=../x", "train.bf16=false"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == ("warning: optim.lr=3 is above 1; fine-tuning learning rates are usually "
                        "1e-6 to 1e-3 (did you mean e.g. 3e-4?)")
    assert lines[1] == "error: invalid config:"
