"""Iterative RLHF / online DPO rounds: each round generates from the last round's policy, a killed
run resumes to the same weights, and the tampering watch warns on a concept that keeps rising."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file
from test_rlhf_pipeline import LengthJudge

from tether.algorithms import rounds
from tether.algorithms.rlhf import CANDIDATES, PREFERENCES, RLHFConfig, run_rlhf
from tether.config import load_config
from tether.models.tiny import save_tiny_llama

# ---- the watch ----------------------------------------------------------------------------------

def history(**series):
    count = len(next(iter(series.values())))
    return [{"win_rates": {concept: values[k] for concept, values in series.items()}} for k in range(count)]


def test_the_watch_warns_on_a_rising_concept_and_not_on_a_flat_one():
    rising = history(length_words=[0.55, 0.68, 0.81], hedging=[0.5, 0.52, 0.49], flattery=[0.6, 0.6, 0.61])
    warnings = rounds.tampering_warnings(rising, "Prefer the answer that is more helpful and honest.")
    assert [w["concept"] for w in warnings] == ["length_words"]
    assert warnings[0]["rise"] == pytest.approx(0.26)
    assert rounds.tampering_warnings(history(length_words=[0.6, 0.6, 0.6]), "") == []
    assert rounds.tampering_warnings(history(length_words=[0.5, 0.7, 0.65]), "") == []  # fell in round 3
    assert rounds.tampering_warnings(history(length_words=[0.5, 0.55]), "", min_rise=0.1) == []  # too small
    assert rounds.tampering_warnings(history(length_words=[0.5, 0.7]), "") != []  # two rounds suffice


def test_the_watch_is_quiet_when_the_constitution_or_the_gold_asks_for_the_concept():
    rising = history(length_words=[0.55, 0.68, 0.81], refusal=[0.3, 0.5, 0.7])
    warnings = rounds.tampering_warnings(rising, "Prefer detailed, thorough answers.")
    assert [w["concept"] for w in warnings] == ["refusal"]
    assert rounds.tampering_warnings(rising, "Prefer detailed answers.", exempt=["refusal"]) == []
    assert rounds.tampering_warnings(rising, "Prefer detailed answers; refuse harmful requests.") == []


def test_rounds_with_no_differing_pairs_are_skipped_not_read_as_zero():
    warnings = rounds.tampering_warnings(history(bold=[0.5, math.nan, 0.8]), "")
    assert warnings and warnings[0]["rounds"] == [1, 3]


def write_pairs(path, n, p_longer, seed):
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(n):
            short, long = "word " * rng.randint(3, 8), "word " * rng.randint(12, 20)
            chosen, rejected = (long, short) if rng.random() < p_longer else (short, long)
            handle.write(json.dumps({"prompt": f"q{i}", "chosen": chosen, "rejected": rejected}) + "\n")


def test_planted_preference_files_whose_length_bias_grows_are_caught(tmp_path):
    grown, flat = [], []
    for k, p in enumerate([0.5, 0.7, 0.9]):
        write_pairs(tmp_path / f"grow{k}.jsonl", 200, p, seed=k)
        write_pairs(tmp_path / f"flat{k}.jsonl", 200, 0.6, seed=k)
        grown.append(rounds.preference_win_rates(tmp_path / f"grow{k}.jsonl", "refusal-patterns"))
        flat.append(rounds.preference_win_rates(tmp_path / f"flat{k}.jsonl", "refusal-patterns"))
    assert [w["concept"] for w in rounds.tampering_warnings(grown, "Be helpful.")] == ["length_words"]
    assert rounds.tampering_warnings(flat, "Be helpful.") == []


# ---- the rounds on a tiny model -----------------------------------------------------------------

@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    save_tiny_llama(root / "model")
    with (root / "prompts.jsonl").open("w") as handle:
        for i in range(6):
            handle.write(json.dumps({"id": f"p{i}", "prompt": f"Tell me about the number {i}."}) + "\n")
    return root


def config_for(job, *overrides):
    return load_config(RLHFConfig, None, [
        f"model.path={job / 'model'}", "model.lora={r: 4, alpha: 8}", f"data.train={job / 'prompts.jsonl'}",
        f"train.output_dir={job / 'runs'}", "train.progress=false", "train.bf16=false", "train.tensorboard=false",
        "generate.num_candidates=3", "generate.max_new_tokens=6", f"rank.judge=local:{job / 'model'}",
        "reward_model.max_length=64", "train.batch_size=4", "optim.lr=1e-2", "train.max_steps=2",
        "rlhf.rounds=2", "rlhf.trainer=dpo", "rlhf.refusal_judge=refusal-patterns", *overrides])


def adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_online_dpo_rounds_generate_from_the_last_policy_and_resume_exactly_after_a_kill(job, monkeypatch):
    import tether.feedback.judge_backends as backends

    monkeypatch.setattr(backends, "backend_from_spec", lambda spec, **_: LengthJudge())
    whole = config_for(job, "train.run_name=whole")
    policy = run_rlhf(whole)
    run = whole.run_dir()
    assert policy == run / "round-2" / rounds.DPO_RUN / "final"
    report = json.loads((run / rounds.ROUNDS_REPORT).read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    # round 2 starts from round 1's policy, with round 2's own seed
    round_1_policy = run / "round-1" / rounds.DPO_RUN / "final"
    assert report["rounds"][1]["start_policy"] == str(round_1_policy)
    assert str(round_1_policy) in (run / "round-2" / "config.yaml").read_text()
    assert (run / "round-1" / CANDIDATES).read_text() != (run / "round-2" / CANDIDATES).read_text()
    assert "length_words" in report["rounds"][0]["win_rates"]

    # killed between the rounds: round 2 never starts
    killed = config_for(job, "train.run_name=killed")
    real_round = rounds.run_dpo_round

    def dies_in_round_2(config):
        if config.train.run_name == "round-2":
            raise KeyboardInterrupt("killed between rounds")
        return real_round(config)

    monkeypatch.setattr(rounds, "run_dpo_round", dies_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_rlhf(killed)
    assert not (killed.run_dir() / "round-2").exists()
    monkeypatch.setattr(rounds, "run_dpo_round", real_round)
    round_1_weights = adapter(killed.run_dir() / "round-1" / rounds.DPO_RUN / "final")
    resumed = run_rlhf(killed)
    # round 1 was not trained again, and the resumed run ends where the uninterrupted one did
    assert all(torch.equal(round_1_weights[k], v)
               for k, v in adapter(killed.run_dir() / "round-1" / rounds.DPO_RUN / "final").items())
    final, expected = adapter(resumed), adapter(policy)
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    for name in (CANDIDATES, PREFERENCES):
        assert (killed.run_dir() / "round-2" / name).read_text() == (run / "round-2" / name).read_text()


def test_ppo_rounds_train_each_round_from_the_last_and_audit_every_policy(job, monkeypatch):
    import tether.feedback.judge_backends as backends

    monkeypatch.setattr(backends, "backend_from_spec", lambda spec, **_: LengthJudge())
    config = config_for(job, "train.run_name=ppo-rounds", "rlhf.trainer=ppo", "reward_model.max_steps=2",
                        "reward_model.batch_size=4", "ppo.prompts_per_step=4", "ppo.num_generations=2",
                        "ppo.max_new_tokens=6", "ppo.eval_prompts=4", "ppo.ppo_epochs=1",
                        "rlhf.audit=[memorization]", "rlhf.audit_limit=2")
    policy = run_rlhf(config)
    run = config.run_dir()
    assert policy == run / "round-2" / "4-ppo" / "final"
    report = json.loads((run / rounds.ROUNDS_REPORT).read_text())
    assert report["rounds"][1]["start_policy"] == str(run / "round-1" / "4-ppo" / "final")
    assert all("memorization_exact_rate" in r["audit"] for r in report["rounds"])
    assert "memorization_exact_rate" in report["start_audit"]  # the starting model, for comparison


def test_a_misspelt_audit_metric_fails_before_any_round(job):
    from tether.errors import ConfigError

    config = config_for(job, "train.run_name=misspelt", "rlhf.audit=[biass]")
    with pytest.raises(ConfigError, match="biass"):
        run_rlhf(config)
    assert not config.run_dir().exists()
