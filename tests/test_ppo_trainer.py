"""PPO end to end on a tiny model: the reward rises; resume is exact; kl_coef 0 loads no reference."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import tether.algorithms.ppo as ppo_module
import tether.algorithms.rl_step as rl_step
from tether.algorithms.ppo import PPOConfig, train_ppo
from tether.config import load_config
from tether.data import load_records
from tether.engine import read_metrics
from tether.errors import ConfigError, DataValidationError
from tether.models.tiny import save_tiny_llama


def letter_e(prompts, completions, **_):
    """Verifiable and dense: one point per letter 'e' emitted."""
    return [float(text.count("e")) for text in completions]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    save_tiny_llama(root / "model")
    with (root / "prompts.jsonl").open("w") as handle:
        for i in range(16):
            handle.write(json.dumps({"prompt": f"Say something about {i}."}) + "\n")
    return root


def config_for(job, *overrides):
    return load_config(PPOConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'prompts.jsonl'}", f"data.eval={job / 'prompts.jsonl'}",
        f"train.output_dir={job / 'runs'}", "train.progress=false", "train.bf16=false", "train.tensorboard=false",
        "ppo.rewards=[{name: 'test_ppo_trainer:letter_e'}]", "ppo.prompts_per_step=8", "ppo.num_generations=2",
        "ppo.max_new_tokens=8", "ppo.eval_prompts=8", "optim.lr=2e-2", "optim.schedule=constant", *overrides])


def test_ppo_raises_the_reward_and_kl_coef_0_loads_no_reference(job, monitored_load_model):
    config = config_for(job, "train.run_name=learn", "ppo.kl_coef=0", "train.max_steps=8")
    final = train_ppo(config)
    assert monitored_load_model == []  # full fine-tuning with kl_coef 0: no reference model
    history = read_metrics(config.run_dir())
    steps = [row for row in history if "reward/mean" in row]
    early = sum(row["reward/mean"] for row in steps[:2]) / 2
    late = sum(row["reward/mean"] for row in steps[-2:]) / 2
    assert late > early + 1.0, (early, late)  # from ~0.3 'e' per completion to several
    assert all(math.isnan(row["kl"]) for row in steps)  # nothing to measure the KL against
    evals = [row for row in history if "eval/proxy_reward" in row]
    assert [row["step"] for row in evals] == [0, 8] and evals[-1]["eval/proxy_reward"] > evals[0]["eval/proxy_reward"]
    for key in ("loss/policy", "loss/value", "clipfrac", "vf_clipfrac", "approx_kl", "entropy",
                "explained_variance", "kl_coef", "grad_norm"):
        assert math.isfinite(steps[-1][key]), key
    assert steps[-1]["updates"] == 4.0  # ppo_epochs x one minibatch of the 16 completions
    assert all(row["logps/sampler_gap"] < 1e-4 for row in steps)  # float32: sampler and trainer agree
    assert all(0 < row["mfu/rollout"] < 1 and 0 < row["mfu/update"] < 1 for row in steps)  # throughput by phase
    assert (final / "value_head.safetensors").is_file() and (config.run_dir() / "curves.png").is_file()


@pytest.fixture
def monitored_load_model(monkeypatch):
    """Records every reference model the PPO trainer loads."""
    loaded = []

    def load(path):
        loaded.append(path)
        return original(path)

    original = rl_step.load_model
    monkeypatch.setattr(rl_step, "load_model", load)
    return loaded


def test_adaptive_kl_with_lora_resumes_exactly(job, monkeypatch):
    common = ["model.lora={r: 4, alpha: 8}", "ppo.adaptive_kl=true", "ppo.kl_target=0.01", "ppo.kl_horizon=100",
              "ppo.kl_estimator=k3", "ppo.minibatch_size=8", "ppo.ppo_epochs=2", "train.max_steps=4",
              "train.save_every=2", "data.eval=null"]
    straight = config_for(job, "train.run_name=straight", *common)
    train_ppo(straight)
    rows = [row for row in read_metrics(straight.run_dir()) if "kl_coef" in row]
    assert rows[0]["kl_coef"] == 0.05 and rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts at the base
    assert rows[-1]["kl"] > 0.01 and rows[-1]["kl_coef"] > 0.05  # KL above target: the coefficient grows
    assert all(row["updates"] == 4.0 for row in rows)  # 2 epochs x 2 minibatches

    calls = {"n": 0}
    original = rl_step.combine_rewards

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th step's scoring: the checkpoint of step 2 is on disk
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(rl_step, "combine_rewards", failing)
    with pytest.raises(KeyboardInterrupt):
        train_ppo(config_for(job, "train.run_name=resumed", *common))
    monkeypatch.setattr(rl_step, "combine_rewards", original)
    train_ppo(config_for(job, "train.run_name=resumed", "train.resume=true", *common))
    resumed = [row for row in read_metrics(straight.run_dir().parent / "resumed") if "kl_coef" in row]
    assert [row["kl_coef"] for row in resumed] == [row["kl_coef"] for row in rows]
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        a = load_file(str(straight.run_dir() / "final" / name))
        b = load_file(str(straight.run_dir().parent / "resumed" / "final" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] == b[key]).all(), key


def test_target_kl_stops_the_updates_early(job):
    config = config_for(job, "train.run_name=early", "ppo.kl_coef=0", "ppo.target_kl=1e-9", "ppo.minibatch_size=4",
                        "train.max_steps=2", "data.eval=null")
    train_ppo(config)
    rows = [row for row in read_metrics(config.run_dir()) if "updates" in row]
    # approx_kl is measured on each minibatch's forward, before its update (as cleanRL does): the first
    # sees the sampling policy itself (KL 0), the second sees the first update's move (> 1e-9) and is the
    # last, so 2 of the 4 epochs x 4 minibatches run.
    assert [(row["updates"], row["early_stopped"]) for row in rows] == [(2.0, 1.0), (2.0, 1.0)]


def test_config_and_prompt_errors(job, tmp_path):
    with pytest.raises(ConfigError, match="ppo.rewards is empty"):
        load_config(PPOConfig, None, [f"data.train={job / 'prompts.jsonl'}", "train.bf16=false"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n{"prompt": 3}\n')
    with pytest.raises(DataValidationError) as error:
        load_records(str(bad), "prompt")  # PPO's prompts: TRL's prompt-only rows
    assert [(p.line, p.field) for p in error.value.problems] == [(2, "prompt"), (3, "prompt")]
    records = load_records(str(job / "prompts.jsonl"), "prompt")
    assert len(records) == 16 and records[0].answer is None and records[0].location.line == 1


def test_value_warmup_fits_the_critic_alone_before_the_first_update(job, monkeypatch):
    """The critic's warm-up raises the first rollout's explained variance from 0 (the zero head) and
    leaves the policy's weights and the session's optimizer and schedule as they were."""
    seen = {}
    original = ppo_module.warm_up_critic

    def watched(session, *args, **kwargs):
        def snapshot():
            return ({name: p.detach().clone() for name, p in session.module.policy.named_parameters()},
                    {name: p.detach().clone() for name, p in session.module.value_head.named_parameters()})

        seen["before"] = snapshot()
        values = original(session, *args, **kwargs)
        seen["after"] = snapshot()
        seen["optimizer"], seen["lr_steps"] = session.optimizer.state_dict()["state"], session.scheduler.last_epoch
        return values

    monkeypatch.setattr(ppo_module, "warm_up_critic", watched)
    config = config_for(job, "train.run_name=warmup", "ppo.kl_coef=0", "ppo.value_warmup_steps=40",
                        "train.max_steps=2", "train.log_every=10", "data.eval=null")
    train_ppo(config)
    (policy_before, head_before), (policy_after, head_after) = seen["before"], seen["after"]
    assert policy_before.keys() == policy_after.keys()
    assert all(torch.equal(policy_before[name], policy_after[name]) for name in policy_before)
    assert not torch.equal(head_before["summary.weight"], head_after["summary.weight"])  # the head moved
    assert seen["optimizer"] == {} and seen["lr_steps"] == 0  # the PPO optimizer has not stepped
    rows = [row for row in read_metrics(config.run_dir()) if "value_warmup/explained_variance_after" in row]
    assert len(rows) == 1 and rows[0]["step"] == 1  # logged once, with the first step (log_every 10 or not)
    before, after = rows[0]["value_warmup/explained_variance_before"], rows[0]["value_warmup/explained_variance_after"]
    assert before == pytest.approx(0.0, abs=1e-6) and after > before + 0.1, (before, after)


def trl_conversational_length(completions, **kwargs):
    """A TRL conversational reward, unchanged: each completion is [{"role": "assistant", ...}]."""
    return [float(len(c[0]["content"])) for c in completions]


def test_ppo_hands_conversational_completions_to_rewards_as_messages(job, tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Hi {i}"}]}) + "\n"
                             for i in range(8)))
    config = config_for(job, "train.run_name=chat", f"data.train={chats}", f"data.eval={chats}",
                        "ppo.rewards=[{name: 'test_ppo_trainer:trl_conversational_length'}]",
                        "train.max_steps=1", "ppo.kl_coef=0", "train.bf16=false")
    train_ppo(config)
    rows = [row for row in read_metrics(config.run_dir()) if "reward/mean" in row]
    assert len(rows) == 1 and rows[0]["rewards/trl_conversational_length/mean"] >= 0


@pytest.mark.parametrize("bf16", [False, True])
def test_ppo_weighs_tokens_by_the_samplers_truncated_importance_ratio(job, monkeypatch, bf16):
    """rollout.importance_cap (TIS, tether/losses/importance.py) reaches PPO's policy loss: a sampler
    that reports each token 0.3 nats less likely than the trainer finds it gets weights
    min(e^0.3, 2) = 1.35 (trainer rounding aside), and the gap is logged beside them."""
    import tether.rollout.backends as backends
    from tether.rollout.sampler import TransformersSampler

    class Underconfident(TransformersSampler):
        def sample(self, prompts, config):
            batch = super().sample(prompts, config)
            batch.model_logps = batch.model_logps - 0.3 * batch.completion_mask
            return batch

    monkeypatch.setattr(backends, "TransformersSampler", Underconfident)
    config = config_for(job, f"train.run_name=tis-{bf16}", f"train.bf16={str(bf16).lower()}", "train.max_steps=2",
                        "data.eval=null", "ppo.ppo_epochs=1", "rollout.importance_cap=2.0")
    train_ppo(config)
    steps = [row for row in read_metrics(config.run_dir()) if "reward/mean" in row]
    assert len(steps) == 2
    tolerance = 0.05 if bf16 else 1e-3  # the trainer's bf16 recomputation moves the ratio a little
    for row in steps:
        assert row["importance_weight/mean"] == pytest.approx(math.exp(0.3), abs=tolerance)
        assert row["logps/sampler_gap"] == pytest.approx(0.3, abs=tolerance)
    if bf16:
        return
    capped = config_for(job, "train.run_name=tis-capped", "train.bf16=false", "train.max_steps=1", "data.eval=null",
                        "ppo.ppo_epochs=1", "rollout.importance_cap=1.1")
    train_ppo(capped)
    row = next(row for row in read_metrics(capped.run_dir()) if "reward/mean" in row)
    assert row["importance_weight/mean"] == pytest.approx(1.1, abs=1e-6)  # every token's ratio capped
