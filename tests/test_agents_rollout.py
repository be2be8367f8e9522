"""Multi-turn rollouts on a tiny model: the loss mask is exactly the model's tokens; a multi-turn
GRPO run writes every trajectory and resumes exactly after being stopped."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tether.algorithms.grpo import GRPOConfig, completion_token_logps, train_grpo
from tether.config import load_config
from tether.envs.rollout import (
    EnvironmentSettings,
    rollout_episodes,
    tool_message_ids,
    trained_token_mask,
)
from tether.models import load_model
from tether.models.tiny import save_tiny_llama
from tether.rollout.sampler import RolloutConfig, TransformersSampler


class RecordingSampler(TransformersSampler):
    """Keeps what each turn sampled, to rebuild the trajectories independently."""

    def __init__(self, *args):
        super().__init__(*args)
        self.turns = []

    def sample_ids(self, encoded, config):
        batch = super().sample_ids(encoded, config)
        self.turns.append((list(encoded), list(batch)))
        return batch


@pytest.fixture
def tiny(tmp_path):
    save_tiny_llama(tmp_path / "model")
    return tmp_path


def test_loss_mask_covers_exactly_the_model_tokens(tiny):
    model, tokenizer = load_model(tiny / "model")
    sampler = RecordingSampler(model, tokenizer)
    settings = EnvironmentSettings(name="test_agents_env:Echo", max_turns=3)
    batch = rollout_episodes(sampler, tokenizer, [{"prompt": "hi"}, {"prompt": "a longer prompt"}], settings,
                             RolloutConfig(num_samples=2, max_new_tokens=6, seed=1))
    assert len(sampler.turns) == 3 and len(batch) == 4
    for row in range(4):
        expected_tokens, expected_mask = [], []
        live_index = row  # every Echo episode runs all turns, so rows keep their order each turn
        for turn, (_, sampled) in enumerate(sampler.turns):
            model_ids = sampled[live_index].completion_ids
            expected_tokens += model_ids
            expected_mask += [1] * len(model_ids)
            if turn < 2:
                message = batch.trajectories[row]["messages"][2 + 2 * turn]
                assert message["role"] == "tool" and message["content"].startswith(f"echo {turn + 1}")
                row_sample = sampled[live_index]
                tool_ids = tool_message_ids(tokenizer, message, row_sample.completion_ids[-1]
                                            if row_sample.finish_reason == "eos" else None)
                assert tool_ids  # the tool output is in the sequence...
                expected_tokens += tool_ids
                expected_mask += [0] * len(tool_ids)  # ...and never trained on
        length = int(batch.completion_mask[row].sum())
        assert batch.completion_ids[row, :length].tolist() == expected_tokens
        assert trained_token_mask(batch)[row, :length].long().tolist() == expected_mask
        assert not trained_token_mask(batch)[row, length:].any()
        # later turns were sampled from the exact tokens so far
        prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist()
        assert sampler.turns[1][0][row] == prompt + expected_tokens[:len(sampler.turns[1][0][row]) - len(prompt)]

    # The teacher-forced log-probs of the model's tokens equal the sampler's (tool outputs attended to).
    with torch.no_grad():
        logps = completion_token_logps(model, batch)
    mask = trained_token_mask(batch)
    assert torch.allclose(logps[mask], batch.model_logps[mask], atol=1e-4)


def test_tool_message_follows_the_chat_template(tiny):
    _, tokenizer = load_model(tiny / "model")
    message = {"role": "tool", "content": "<tool_response>\n4\n</tool_response>"}
    ended = tokenizer.decode(tool_message_ids(tokenizer, message, tokenizer.convert_tokens_to_ids("<|im_end|>")))
    cut = tokenizer.decode(tool_message_ids(tokenizer, message, None))
    assert ended == "\n<|im_start|>tool\n<tool_response>\n4\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert cut == "<|im_end|>" + ended  # a turn cut by the length limit is closed first


def config_for(job, *overrides):
    return load_config(GRPOConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'tasks.jsonl'}", f"data.eval={job / 'tasks.jsonl'}",
        f"train.output_dir={job / 'runs'}", "train.progress=false", "train.bf16=false", "train.tensorboard=false",
        "grpo.environment={name: 'test_agents_env:Echo', max_turns: 3}", "grpo.num_generations=4",
        "grpo.prompts_per_step=2", "grpo.max_new_tokens=6", "optim.lr=2e-2", "optim.schedule=constant",
        "train.max_steps=4", *overrides])


@pytest.mark.parametrize("bf16", [False, True])  # bf16 autocast: the path AMX machines and GPUs take
def test_multi_turn_grpo_saves_trajectories_and_resumes_exactly(tiny, bf16):
    with (tiny / "tasks.jsonl").open("w") as handle:
        for i in range(8):
            handle.write(json.dumps({"prompt": f"task {i}"}) + "\n")
    straight = config_for(tiny, "train.run_name=straight", f"train.bf16={bf16}")
    train_grpo(straight)
    lines = [json.loads(line) for line in (straight.run_dir() / "trajectories.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [step for step in range(1, 5) for _ in range(8)]
    assert all(len(line["messages"]) == 1 + 3 + 2 for line in lines)  # prompt, 3 model turns, 2 tool outputs

    import tether.algorithms.rl_step as rl_step_module  # where rollouts are sampled

    calls = {"n": 0}
    original = rl_step_module.rollout_episodes

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # 3 steps, then the 4th step stops (held-out episodes run in grpo.py)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    rl_step_module.rollout_episodes = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            train_grpo(config_for(tiny, "train.run_name=resumed", "train.save_every=2", f"train.bf16={bf16}"))
    finally:
        rl_step_module.rollout_episodes = original
    resumed = config_for(tiny, "train.run_name=resumed", "train.save_every=2", "train.resume=true",
                         f"train.bf16={bf16}")
    train_grpo(resumed)
    a = load_file(str(straight.run_dir() / "final" / "model.safetensors"))
    b = load_file(str(resumed.run_dir() / "final" / "model.safetensors"))
    for name in a:
        assert (a[name] == b[name]).all(), name
    again = [json.loads(line) for line in (resumed.run_dir() / "trajectories.jsonl").read_text().splitlines()]
    assert again == lines  # the stopped steps' episodes were dropped and made again, the same


def test_episode_gae_bridges_tool_outputs_and_equals_gae_without_them():
    from tether.envs.rollout import episode_gae
    from tether.losses.ppo import gae

    torch.manual_seed(0)
    rewards, values = torch.randn(2, 7), torch.randn(2, 7)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0], [1, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    advantages, returns = episode_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for row in range(2):
        keep = mask[row].nonzero().squeeze(1)
        expected_adv, expected_ret = gae(rewards[row, keep][None], values[row, keep][None],
                                         torch.ones(1, len(keep), dtype=torch.bool), gamma=0.9, lam=0.8)
        assert torch.allclose(advantages[row, keep], expected_adv[0])
        assert torch.allclose(returns[row, keep], expected_ret[0])
        assert (advantages[row, ~mask[row]] == 0).all() and (returns[row, ~mask[row]] == 0).all()
    # By hand, row 1's first token: delta_0 = r_0 + 0.9 * V_2 - V_0 uses the next *model* token's value.
    delta = [rewards[1, t] + 0.9 * nxt - values[1, t] for t, nxt in ((0, values[1, 2]), (2, values[1, 4]), (4, 0.0))]
    assert torch.isclose(advantages[1, 0], delta[0] + 0.72 * (delta[1] + 0.72 * delta[2]))
    plain = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    for got, want in zip(episode_gae(rewards, values, plain, gamma=0.9, lam=0.8),
                         gae(rewards, values, plain, gamma=0.9, lam=0.8)):
        assert torch.equal(got, want)


def test_multi_turn_ppo_trains_on_episodes_and_resumes_exactly(tiny):
    from tether.algorithms.ppo import PPOConfig, train_ppo

    with (tiny / "tasks.jsonl").open("w") as handle:
        for i in range(8):
            handle.write(json.dumps({"prompt": f"task {i}"}) + "\n")

    def config(*overrides):
        return load_config(PPOConfig, None, [
            f"model.path={tiny / 'model'}", f"data.train={tiny / 'tasks.jsonl'}", f"train.output_dir={tiny / 'runs'}",
            "train.progress=false", "train.bf16=false", "train.tensorboard=false",
            "ppo.environment={name: 'test_agents_env:Echo', max_turns: 3}", "ppo.prompts_per_step=4",
            "ppo.num_generations=2", "ppo.max_new_tokens=6", "ppo.value_warmup_steps=2", "optim.lr=1e-3",
            "optim.schedule=constant", "train.max_steps=3", *overrides])

    straight = config("train.run_name=ppo-straight")
    train_ppo(straight)
    lines = (straight.run_dir() / "trajectories.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [s for s in range(1, 4) for _ in range(8)]

    import tether.algorithms.rl_step as rl_step_module  # where rollouts are sampled

    calls = {"n": 0}
    original = rl_step_module.rollout_episodes

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # 2 steps, then the third stops
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    rl_step_module.rollout_episodes = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            train_ppo(config("train.run_name=ppo-resumed", "train.save_every=1"))
    finally:
        rl_step_module.rollout_episodes = original
    resumed = config("train.run_name=ppo-resumed", "train.save_every=1", "train.resume=true")
    train_ppo(resumed)
    for name in ("model.safetensors", "value_head.safetensors"):  # full fine-tuning: the whole policy
        a, b = load_file(str(straight.run_dir() / "final" / name)), load_file(str(resumed.run_dir() / "final" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] == b[key]).all(), key
    assert (resumed.run_dir() / "trajectories.jsonl").read_text().splitlines() == lines

