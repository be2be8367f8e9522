import warnings
from pathlib import Path

import pytest

from tether.algorithms.sft import SFTConfig
from tether.config import load_config
from tether.errors import ConfigError


@pytest.fixture(autouse=True)
def _auto_precision_is_float32(monkeypatch):
    """These tests are about parsing, not precision: ``auto`` resolves to float32 here."""
    monkeypatch.setattr("tether.hardware.bf16_is_fast", lambda: False)

def test_recipe_and_dotted_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train: a.jsonl\noptim:\n  lr: 0.001\n")
    config = load_config(SFTConfig, recipe, ["optim.lr=3e-4", "model.lora.r=8", "train.bf16=true"])
    assert config.optim.lr == 3e-4
    assert config.model.lora.r == 8 and config.model.lora.alpha == 32
    assert config.train.bf16 is True and config.data.train == "a.jsonl"


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train: a.jsonl\noptim:\n  lrr: 0.001\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr'; did you mean 'optim\.lr'\?"):
        load_config(SFTConfig, recipe)


def test_unknown_override_and_top_level_section():
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; did you mean 'train'\?"):
        load_config(SFTConfig, None, ["data.train=a.jsonl", "trian.seed=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'train\.max_step'; did you mean 'train\.max_steps'"):
        load_config(SFTConfig, None, ["data.train=a.jsonl", "train.max_step=5"])


def test_wrong_type_and_missing_key_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match=r"'optim.lr': Input should be a valid number"):
        load_config(SFTConfig, None, ["data.train=a.jsonl", "optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"missing required key 'data'"):
        load_config(SFTConfig, None, [])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(SFTConfig, None, ["data.train"])


def test_packing_needs_a_token_budget():
    with pytest.raises(ConfigError, match="train.batch_size is a token budget"):
        load_config(SFTConfig, None, ["data.train=a.jsonl", "data.batching=pack", "train.batch_size=8",
                                        "train.bf16=false"])


@pytest.mark.parametrize("fast", [False, True])
def test_bf16_auto_follows_the_hardware(monkeypatch, fast):
    monkeypatch.setattr("tether.hardware.bf16_is_fast", lambda: fast)
    assert load_config(SFTConfig, None, ["data.train=a.jsonl"]).train.bf16 is fast
    assert load_config(SFTConfig, None, ["data.train=a.jsonl", "train.bf16=false"]).train.bf16 is False


def test_errors_say_whether_the_recipe_or_a_command_line_override_set_the_value(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train: a.jsonl\nmodel:\n  lora: {r: 0}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(SFTConfig, recipe, ["optim.lr=-1", "train.max_step=5", "train.bf16=false"])
    lines = str(caught.value).splitlines()
    assert f"  {recipe}: 'model.lora.r': Input should be greater than 0 (got 0)" in lines
    assert "  command line override optim.lr=-1: 'optim.lr': Input should be greater than 0 (got -1)" in lines
    assert any(line.startswith("  command line override train.max_step=5: unknown key 'train.max_step'")
               for line in lines)
    assert not any(str(recipe) in line and "optim.lr" in line for line in lines)


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/../../b", "", "."])
def test_run_name_cannot_leave_the_output_dir(name):
    with pytest.raises(ConfigError, match=r"'train.run_name': must be a folder name inside train.output_dir"):
        load_config(SFTConfig, None, ["data.train=a.jsonl", f"train.run_name={name}", "train.bf16=false"])


def test_run_name_may_name_a_subfolder():
    config = load_config(SFTConfig, None, ["data.train=a.jsonl", "train.run_name=sweep/lr-1e-4",
                                           "train.output_dir=out", "train.bf16=false"])
    assert config.run_dir() == Path("out/sweep/lr-1e-4")


def test_cai_run_name_cannot_leave_the_output_dir():
    from tether.algorithms.cai import CAIConfig

    with pytest.raises(ConfigError, match="'train.run_name': must be a folder name"):
        load_config(CAIConfig, "tether:recipes/cai.yaml", ["train.run_name=../x", "sft.train.bf16=false",
                                                           "dpo.train.bf16=false"])


def test_a_learning_rate_above_one_warns_and_a_usual_one_does_not():
    with pytest.warns(UserWarning, match=r"optim.lr=3 is above 1"):
        load_config(SFTConfig, None, ["data.train=a.jsonl", "optim.lr=3", "train.bf16=false"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(SFTConfig, None, ["data.train=a.jsonl", "optim.lr=1e-3", "train.bf16=false"])


def test_each_algorithms_config_lives_beside_its_loop_and_old_imports_still_work():
    import tether.config
    from tether.algorithms.dpo import DPOConfig
    from tether.commands.train import TRAINERS

    assert tether.config.DPOConfig is DPOConfig
    for algorithm, (config_class, train) in TRAINERS.items():
        assert config_class.split(":")[0] == train.split(":")[0], algorithm  # one home: the trainer's module
    with pytest.raises(AttributeError):
        tether.config.NoSuchConfig  # noqa: B018 (the attribute access is what raises)
