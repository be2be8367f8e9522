"""The RLHF pipeline end to end on a tiny model: every stage's output exists, and a rerun skips them all;
the reward model is checked on held-out prompts."""

import json

import pytest

from tether.algorithms.reward import RewardModelSettings
from tether.algorithms.rlhf import (
    CANDIDATES,
    JUDGMENTS,
    PPO_RUN,
    PREFERENCES,
    PREFERENCES_HELD_OUT,
    PREFERENCES_TRAIN,
    REPORT,
    REWARD_RUN,
    RLHFConfig,
    reward_model_summary,
    run_rlhf,
    split_by_prompt,
)
from tether.config import load_config
from tether.errors import ConfigError, DataValidationError
from tether.feedback.generate import read_records
from tether.feedback.records import FeedbackItem, Judgment
from tether.models.tiny import save_tiny_llama


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlhf")
    save_tiny_llama(root / "model")
    with (root / "prompts.jsonl").open("w") as handle:
        for i in range(8):
            handle.write(json.dumps({"id": f"p{i}", "prompt": f"Tell me about the number {i}."}) + "\n")
    return root


def config_for(job, *overrides):
    model = job / "model"
    return load_config(RLHFConfig, None, [
        f"model.path={model}", "model.lora={r: 4, alpha: 8}", f"data.train={job / 'prompts.jsonl'}",
        f"train.output_dir={job / 'runs'}", "train.progress=false", "train.bf16=false", "train.tensorboard=false",
        "generate.num_candidates=3", "generate.max_new_tokens=6", f"rank.judge=local:{model}",
        "reward_model.max_steps=2", "reward_model.batch_size=4", "reward_model.max_length=64",
        "ppo.prompts_per_step=4", "ppo.num_generations=2", "ppo.max_new_tokens=6", "ppo.eval_prompts=4",
        "ppo.ppo_epochs=2", "optim.lr=1e-2", "train.max_steps=2", *overrides])


class LengthJudge:
    """A judge with a consistent taste (the longer response wins, equal lengths tie), unlike the random
    tiny model, whose position bias makes its two orders disagree on every pair."""

    name = "length-judge"

    def judge(self, requests, constitution, *, progress=True):
        from tether.feedback.judge_backends import BackendVerdict

        def choice(a, b):
            return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"

        return [BackendVerdict(choice=choice(r.response_a, r.response_b), raw="") for r in requests]


def test_three_steps_then_a_rerun_skips_every_stage(job, monkeypatch):
    import tether.feedback.judge_backends as backends

    specs = []
    monkeypatch.setattr(backends, "backend_from_spec", lambda spec, **_: specs.append(spec) or LengthJudge())
    config = config_for(job, "train.run_name=rlhf")
    policy = run_rlhf(config)
    run = config.run_dir()

    assert specs == [f"local:{job / 'model'}"]
    items = read_records(run / CANDIDATES, FeedbackItem)
    assert len(items) == 8 and all(len(item.candidates) == 3 for item in items)
    judgments = read_records(run / JUDGMENTS, Judgment)
    assert len(judgments) == 8 and all(j.source == "ai" and j.task == "ranking" for j in judgments)
    pairs = [json.loads(line) for line in (run / PREFERENCES).read_text().splitlines()]
    assert pairs and set(pairs[0]) == {"id", "prompt", "chosen", "rejected"}
    # Stage 3 holds out whole prompts: every pair of a prompt on one side, together all the pairs.
    train, held_out = ([json.loads(line) for line in (run / name).read_text().splitlines()]
                       for name in (PREFERENCES_TRAIN, PREFERENCES_HELD_OUT))
    assert train and held_out and sorted(map(json.dumps, train + held_out)) == sorted(map(json.dumps, pairs))
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in held_out}
    prompts = {row["prompt"] for row in pairs}
    assert len({row["prompt"] for row in held_out}) == max(1, round(0.2 * len(prompts)))
    assert split_by_prompt(run / PREFERENCES, 0.2, config.train.seed, RewardModelSettings()) == (train, held_out)
    assert (run / REWARD_RUN / "final" / "config.json").is_file()
    assert policy == run / PPO_RUN / "final" and (policy / "adapter_model.safetensors").is_file()

    report = json.loads((run / REPORT).read_text())
    assert (report["before_step"], report["after_step"]) == (0, 2)
    assert set(report["proxy_reward"]) == {"before", "after"}
    assert report["kl"]["before"] == pytest.approx(0.0, abs=1e-6) and report["kl"]["after"] >= 0
    reward_model = report["reward_model"]
    assert (reward_model["train_pairs"], reward_model["held_out_pairs"]) == (len(train), len(held_out))
    assert 0 <= reward_model["held_out_accuracy"] <= 1 and 0 <= reward_model["held_out_ece"] <= 1
    reward_report = json.loads((run / REWARD_RUN / "reward_report.json").read_text())
    assert reward_model["held_out_accuracy"] == reward_report["held_out_after"]["accuracy"]
    assert all(seconds is not None for seconds in report["seconds"].values())
    ppo_config = (run / PPO_RUN / "config.yaml").read_text()
    assert f"reward_model:{run / REWARD_RUN / 'final'}" in ppo_config  # PPO scored with the trained model

    stamps = {path: path.stat().st_mtime_ns for path in (run / CANDIDATES, run / PREFERENCES, run / PREFERENCES_TRAIN,
                                                          run / REWARD_RUN / "final" / "config.json",
                                                          policy / "adapter_model.safetensors")}
    run_rlhf(config)
    rerun = json.loads((run / REPORT).read_text())
    assert rerun["seconds"] == {"generate": None, "rank": None, "reward_model": None, "ppo": None}
    assert rerun["proxy_reward"] == report["proxy_reward"]
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps


def test_labeling_app_source_stops_after_generation_until_the_export_exists(job):
    config = config_for(job, "train.run_name=by-hand", "rank.source=file", "generate.max_prompts=4")
    with pytest.raises(ConfigError, match="Label .*1-candidates.jsonl in the labeling app"):
        run_rlhf(config)
    items = read_records(config.run_dir() / CANDIDATES, FeedbackItem)
    assert len(items) == 4 and not (config.run_dir() / PREFERENCES).exists()

    # The annotators' export, in TRL's ranking format: first candidate best.
    export = job / "export.jsonl"
    export.write_text("".join(json.dumps({"prompt": item.prompt, "responses": [c.text for c in item.candidates],
                                          "ranks": [1, 2, 3]}) + "\n" for item in items))
    run_rlhf(config_for(job, "train.run_name=by-hand", "rank.source=file", "generate.max_prompts=4",
                        f"rank.file={export}"))
    rows = [json.loads(line) for line in (config.run_dir() / PREFERENCES).read_text().splitlines()]
    assert rows == [json.loads(line) for line in export.read_text().splitlines()]  # the run's own copy
    report = json.loads((config.run_dir() / REPORT).read_text())
    assert report["seconds"]["generate"] is None and report["seconds"]["ppo"] is not None
    # each ranking of 3 gives 3 pairs; 1 of the 4 prompts (round(0.2 * 4)) is held out
    assert (report["reward_model"]["train_pairs"], report["reward_model"]["held_out_pairs"]) == (3 * 3, 3)


def test_held_out_fraction_is_checked_and_needs_two_prompts(job, tmp_path):
    for bad in ("1", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match="heldout_fraction"):
            config_for(job, f"reward_model.heldout_fraction={bad}")
    one_prompt = tmp_path / "one.jsonl"
    one_prompt.write_text("".join(json.dumps({"prompt": "Hi.", "chosen": f"Hello {i}.", "rejected": "No."}) + "\n"
                                  for i in range(3)))
    with pytest.raises(ConfigError, match="pairs for 1 prompt.*heldout_fraction=0"):
        split_by_prompt(one_prompt, 0.2, 0, RewardModelSettings())
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "Hi.", "chosen": "Hello.", "rejected": "No."}\n{"prompt": "Hi."}\n')
    with pytest.raises(DataValidationError) as error:
        split_by_prompt(broken, 0.2, 0, RewardModelSettings())
    assert [(problem.file, problem.line) for problem in error.value.problems][:1] == [(str(broken), 2)]


def test_the_report_says_plainly_when_the_reward_model_learned_nothing():
    def summary(accuracy, pairs=400):
        return reward_model_summary({"held_out_pairs": pairs, "held_out_after": {"accuracy": accuracy, "ece": 0.1},
                                     "held_out_before": {"accuracy": 0.5, "ece": 0.2}})

    assert "did not learn the ranking" in summary(0.55)["warning"] and "PPO optimised noise" in summary(0.5)["warning"]
    assert "warning" not in summary(0.8)
    assert "within noise of chance" in summary(0.67, pairs=6)["warning"]  # 0.67 +- 0.19
    assert summary(0.8)["held_out_accuracy_stderr"] == pytest.approx(0.02)
    assert "heldout_fraction: 0" in reward_model_summary({"held_out_pairs": 0, "held_out_after": None})["warning"]


def test_generate_temperature_may_hold_one_greedy_candidate(job):
    """0 is greedy: one of a prompt's candidates may be greedy beside sampled ones; a greedy share of
    two or more would give identical candidates, refused when the config loads."""
    config = config_for(job, "generate.num_candidates=2", "generate.temperature=[0, 1.0]")
    assert config.generate.temperature == [0, 1.0]
    for temperatures, candidates in (("0", 2), ("[0, 1.0]", 4), ("[-0.5, 1.0]", 2)):
        with pytest.raises(ConfigError, match="generate.temperature"):
            config_for(job, f"generate.num_candidates={candidates}", f"generate.temperature={temperatures}")
