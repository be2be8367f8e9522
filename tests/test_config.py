import pytest

from tether.config import SFTConfig, load_config
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
