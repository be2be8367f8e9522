"""Everything checkable before the model loads is checked first, and a run that fails those checks
leaves no run folder behind: bad data, unknown rewards, a reward that needs a column the data
lacks, audit gates on metrics nobody reports, and a --resume with nothing to resume."""

from __future__ import annotations

import json

import pytest

import tether.algorithms.common as common
import tether.algorithms.reward as reward_module
from tether.algorithms.cai import CAIConfig, run_cai
from tether.algorithms.dpo import DPOConfig, train_dpo
from tether.algorithms.grpo import GRPOConfig, train_grpo
from tether.algorithms.ppo import PPOConfig, train_ppo
from tether.algorithms.reward import RewardModelConfig, train_reward_model
from tether.algorithms.rlhf import RLHFConfig, run_rlhf
from tether.algorithms.sft import SFTConfig, train_sft
from tether.config import load_config
from tether.errors import CheckpointError, ConfigError, DataValidationError
from tether.models.tiny import save_tiny_llama

PREFERENCE = {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}
ROWS = {  # one valid row of each trainer's data
    "sft": {"prompt": "What is 12 plus 7?", "completion": "19"},
    "dpo": PREFERENCE,
    "reward": PREFERENCE,
    "grpo": {"prompt": "What is 2 + 2?", "answer": "4"},
    "ppo": {"prompt": "Say something."},
}
TRAINERS = {
    "sft": (SFTConfig, train_sft, []),
    "dpo": (DPOConfig, train_dpo, []),
    "reward": (RewardModelConfig, train_reward_model, []),
    "grpo": (GRPOConfig, train_grpo, ["grpo.rewards=[{name: math_answer}]"]),
    "ppo": (PPOConfig, train_ppo, ["ppo.rewards=[{name: length_proxy}]", "ppo.prompts_per_step=1"]),
}


def reward_needing_a_tag_column(prompts, completions, tag, **_):
    return [float(t in c) for c, t in zip(completions, tag)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("preflight") / "model"
    save_tiny_llama(path)
    return path


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Any policy or reward-model load fails the test: every check here comes before one."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the checks failed")

    monkeypatch.setattr(common, "load_model", refuse)
    monkeypatch.setattr(reward_module, "load_reward_model", refuse)


def write(path, *rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def run(algorithm, model, tmp_path, *overrides, rows=None):
    config_class, train, defaults = TRAINERS[algorithm]
    data = write(tmp_path / "data.jsonl", *(rows or [ROWS[algorithm]]))
    config = load_config(config_class, None, [
        f"model.path={model}", f"data.train={data}", f"train.output_dir={tmp_path / 'runs'}",
        "train.run_name=checked", "train.progress=false", "train.bf16=false", *defaults, *overrides])
    train(config)


@pytest.mark.parametrize("algorithm", sorted(TRAINERS))
def test_a_bad_data_file_fails_before_the_model_loads_and_leaves_no_run_folder(algorithm, model, tmp_path):
    with pytest.raises(DataValidationError) as error:
        run(algorithm, model, tmp_path, rows=[ROWS[algorithm], '{"prompt": "unclosed'])
    assert f"{tmp_path / 'data.jsonl'}:2" in str(error.value)
    assert not (tmp_path / "runs" / "checked").exists()


@pytest.mark.parametrize("algorithm", sorted(TRAINERS))
def test_resume_without_a_checkpoint_fails_first_and_leaves_no_run_folder(algorithm, model, tmp_path):
    with pytest.raises(CheckpointError, match="--resume: no checkpoint in"):
        run(algorithm, model, tmp_path, "train.resume=true")
    assert not (tmp_path / "runs" / "checked").exists()


@pytest.mark.parametrize("algorithm", ["sft", "grpo"])
def test_an_audit_gate_on_a_metric_nobody_reports_fails_first(algorithm, model, tmp_path):
    with pytest.raises(ConfigError, match="audit.stop_on names over_refusl"):
        run(algorithm, model, tmp_path, "audit.every=1", "audit.stop_on='over_refusl>+10pp'")
    assert not (tmp_path / "runs" / "checked").exists()


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_an_unknown_reward_fails_first_and_leaves_no_run_folder(algorithm, model, tmp_path):
    with pytest.raises(ConfigError, match="cannot import reward 'no_such_module:fn'"):
        run(algorithm, model, tmp_path, f"{algorithm}.rewards=[{{name: 'no_such_module:fn'}}]")
    assert not (tmp_path / "runs" / "checked").exists()


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_a_reward_that_reads_a_missing_column_fails_first(algorithm, model, tmp_path):
    reward = "test_preflight:reward_needing_a_tag_column"
    with pytest.raises(ConfigError, match="reward 'reward_needing_a_tag_column' reads the column.s. tag, which"):
        run(algorithm, model, tmp_path, f"{algorithm}.rewards=[{{name: '{reward}'}}]")
    assert not (tmp_path / "runs" / "checked").exists()


def test_math_answer_on_prompt_only_data_names_the_missing_answer_column(model, tmp_path):
    with pytest.raises(ConfigError, match="reward 'math_answer' reads the column.s. answer, which .* "
                                          r"does not have \(its columns: none\)"):
        run("grpo", model, tmp_path, rows=[{"prompt": "What is 2 + 2?"}])
    assert not (tmp_path / "runs" / "checked").exists()


def test_pipelines_check_resume_and_prompts_first(model, tmp_path):
    prompts = write(tmp_path / "prompts.jsonl", {"prompt": "Hi", "kind": "harmful"})
    rlhf = load_config(RLHFConfig, None, [
        f"model.path={model}", f"data.train={prompts}", f"train.output_dir={tmp_path / 'runs'}",
        "train.run_name=checked", "train.bf16=false", "train.resume=true"])
    with pytest.raises(CheckpointError, match="--resume: no run folder"):
        run_rlhf(rlhf)
    write(prompts, '{"prompt": 3}')
    with pytest.raises(DataValidationError):
        run_rlhf(rlhf.model_copy(update={"train": rlhf.train.model_copy(update={"resume": False})}))
    cai = load_config(CAIConfig, None, [
        f"train.output_dir={tmp_path / 'runs'}", "train.run_name=checked", f"prompts.path={prompts}",
        f"sft.model.path={model}", "sft.train.bf16=false", "dpo.train.bf16=false"])
    with pytest.raises(DataValidationError):
        run_cai(cai)
    with pytest.raises(CheckpointError, match="--resume: no run folder"):
        run_cai(cai.model_copy(update={"train": cai.train.model_copy(update={"resume": True})}))
    assert not (tmp_path / "runs").exists()
