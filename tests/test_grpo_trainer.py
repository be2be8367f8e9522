"""GRPO end to end on a tiny model: reward rises on a verifiable task; resume is exact."""

import json

import pytest
from safetensors.torch import load_file

from tether.algorithms.grpo import GRPOConfig, train_grpo
from tether.config import load_config
from tether.engine import read_metrics
from tether.errors import ConfigError
from tether.models.tiny import save_tiny_llama


def answer_token_reward(prompts, completions, answer, **_):
    """The share of characters that are the answer digit."""
    return [sum(ch == a for ch in text) / max(len(text), 1) for text, a in zip(completions, answer)]


def other_digit_reward(prompts, completions, answer, **_):
    """Partial credit for any other digit. The random tiny model writes the answer digit in ~1 of 320
    tokens, so on the answer alone most steps see no signal and whether a 16-step run takes off
    depends on the seed (float32 seed 3 and the bf16 run of seed 0 stayed near 0); with this shaping
    every seed 0-3 climbs in both precisions."""
    return [sum(ch.isdigit() and ch != a for ch in text) / max(len(text), 1) for text, a in zip(completions, answer)]


@pytest.fixture
def job(tmp_path):
    save_tiny_llama(tmp_path / "model")
    with (tmp_path / "tasks.jsonl").open("w") as handle:
        for i in range(16):
            handle.write(json.dumps({"prompt": f"Repeat the digit {i % 3 + 1}.", "answer": str(i % 3 + 1)}) + "\n")
    return tmp_path


def config_for(job, *overrides):
    return load_config(GRPOConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'tasks.jsonl'}", f"data.eval={job / 'tasks.jsonl'}",
        f"train.output_dir={job / 'runs'}", "train.progress=false", "train.bf16=false", "train.tensorboard=false",
        "grpo.rewards=[{name: 'test_grpo_trainer:answer_token_reward'}, "
        "{name: 'test_grpo_trainer:other_digit_reward', weight: 0.25}]", "grpo.num_generations=8",
        "grpo.prompts_per_step=4", "grpo.max_new_tokens=8", "optim.lr=2e-2", "optim.schedule=constant",
        "train.max_steps=16", *overrides])


def early_late(history, key="reward/mean"):
    values = [row[key] for row in history if key in row]
    return sum(values[:4]) / 4, sum(values[-4:]) / 4


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_grpo_raises_reward(job, loss_type, bf16):
    extra = {"dr_grpo": ["grpo.advantage_scale=none"], "dapo": ["grpo.epsilon_high=0.28", "grpo.overlong_buffer=4"],
             "gspo": ["grpo.epsilon_low=3e-4", "grpo.epsilon_high=4e-4", "grpo.updates_per_rollout=2"],
             }.get(loss_type, [])
    config = config_for(job, f"train.run_name={loss_type}", f"grpo.loss_type={loss_type}",
                        f"train.bf16={str(bf16).lower()}", *extra)
    train_grpo(config)
    history = read_metrics(config.run_dir())
    early, late = early_late(history)
    assert late > early + 0.15, (early, late)
    if loss_type != "dapo":  # dapo's rise is mostly its overlong penalty going away (-0.93 -> 0)
        answer_early, answer_late = early_late(history, "rewards/answer_token_reward/mean")
        assert answer_late > answer_early + 0.1, (answer_early, answer_late)  # the answer, not only digits
    first = history[1]  # one update per rollout: the ratio starts at exactly 1 (the trainer's own old log-probs)
    if loss_type != "gspo":
        assert first["clip_ratio/region_mean"] == 0.0
    assert first["logps/sampler_gap"] < (0.05 if bf16 else 1e-4)
    assert history[0]["step"] == 0 and "eval/answer_token_reward" in history[0]
    assert (config.run_dir() / "curves.png").is_file()
    for key in ("mfu/rollout", "mfu/update", "run_mfu", "run_tokens_per_s"):  # throughput by phase
        assert 0 < history[-1][key] < (1e9 if key.endswith("tokens_per_s") else 1), key


def test_grpo_with_kl_and_several_updates_and_resume(job):
    common = ["grpo.beta=0.05", "grpo.updates_per_rollout=2", "grpo.minibatch_rows=16", "train.max_steps=6"]
    straight = config_for(job, "train.run_name=straight", *common)
    train_grpo(straight)
    assert all(row["kl"] >= 0 for row in read_metrics(straight.run_dir()) if "kl" in row)

    first = config_for(job, "train.run_name=resumed", "train.save_every=3", *common)
    # Stop after 3 steps by failing the 4th rollout's reward, then resume.
    import tether.algorithms.rl_step as rl_step

    calls = {"n": 0}
    original = rl_step.combine_rewards

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the rollouts of 3 steps are scored, then the 4th step's fails
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    rl_step.combine_rewards = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            train_grpo(first)
    finally:
        rl_step.combine_rewards = original
    train_grpo(config_for(job, "train.run_name=resumed", "train.resume=true", "train.save_every=3", *common))
    a = load_file(str(job / "runs" / "straight" / "final" / "model.safetensors"))
    b = load_file(str(job / "runs" / "resumed" / "final" / "model.safetensors"))
    for name in a:
        assert (a[name] == b[name]).all(), name


def test_dynamic_sampling_drops_exactly_the_flat_groups(job):
    config = config_for(job, "train.run_name=dyn", "grpo.loss_type=dapo", "grpo.dynamic_sampling=true",
                        "train.max_steps=6")
    train_grpo(config)
    rows = [(row["rows_trained"], row["frac_zero_variance_groups"]) for row in read_metrics(config.run_dir())
            if "rows_trained" in row]
    assert any(flat > 0 for _, flat in rows)  # the random tiny model often scores a whole group 0
    for trained, flat in rows:
        assert trained == pytest.approx(32 * (1 - flat))


def test_unknown_reward_is_a_config_error(job):
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        train_grpo(config_for(job, "train.run_name=bad", "grpo.rewards=[{name: nope}]"))


def trl_conversational_reward(completions, **kwargs):
    """A reward written for TRL's conversational datasets, unchanged: completions only, each a
    list with one assistant message; no answer column."""
    return [sum(ch == "1" for ch in c[0]["content"]) / max(len(c[0]["content"]), 1) for c in completions]


def test_grpo_on_conversational_prompt_only_data_with_a_trl_reward(tmp_path):
    save_tiny_llama(tmp_path / "model")
    with (tmp_path / "chats.jsonl").open("w") as handle:  # prompt-only: no answer column
        for i in range(8):
            handle.write(json.dumps({"prompt": [{"role": "user", "content": f"Say 1, {i} times."}]}) + "\n")
    config = load_config(GRPOConfig, None, [
        f"model.path={tmp_path / 'model'}", f"data.train={tmp_path / 'chats.jsonl'}",
        f"data.eval={tmp_path / 'chats.jsonl'}", f"train.output_dir={tmp_path / 'runs'}", "train.run_name=chat",
        "train.progress=false", "train.tensorboard=false", "train.bf16=false",
        "grpo.rewards=[{name: 'test_grpo_trainer:trl_conversational_reward'}]", "grpo.num_generations=4",
        "grpo.prompts_per_step=2", "grpo.max_new_tokens=6", "train.max_steps=2"])
    train_grpo(config)
    history = read_metrics(config.run_dir())
    assert [row["step"] for row in history if "eval/trl_conversational_reward" in row] == [0, 2]
    # every held-out answer is kept per evaluation, with its scores, and averages to the logged metric
    for row in (row for row in history if "eval/trl_conversational_reward" in row):
        answers = [json.loads(line) for line in
                   (config.run_dir() / "heldout_answers" / f"step-{row['step']:05d}.jsonl").read_text().splitlines()]
        assert len(answers) == 8 and all(isinstance(answer["completion"], str) for answer in answers)
        scores = [answer["trl_conversational_reward"] for answer in answers]
        assert sum(scores) / 8 == pytest.approx(row["eval/trl_conversational_reward"])
    assert all(0 <= row["reward/mean"] <= 1 for row in history if "reward/mean" in row)
