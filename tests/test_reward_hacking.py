"""Reward-hacking detection: the detector on synthetic series, and a planted GRPO run that games a proxy."""

import json

import pytest

from tether.audit.reward_hacking import PLOT_FILE, detect_hacking, fitted_change
from tether.engine import read_metrics


def test_fitted_change_is_the_least_squares_rise():
    assert fitted_change([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    # slope of (1.2, 1.0, 0.6) is -0.3, over two steps -0.6; last - first would say -0.6 too
    assert fitted_change([1.2, 1.0, 0.6]) == pytest.approx(-0.6)
    # a late dip and recovery: last - first says +0.1, the fitted line says falling (slope -2.3 / 5 = -0.46, x 3)
    assert fitted_change([0.0, 5.0, 0.1, 0.1]) == pytest.approx(-1.38)
    assert fitted_change([4.0]) == 0.0


def test_detector_fires_only_when_gold_falls_while_proxy_rises():
    proxy = [0.0, 0.5, 1.0, 1.5]
    signal = detect_hacking(proxy, [1.0, 1.2, 1.0, 0.6], window=3)
    assert signal.fired and signal.proxy_change == pytest.approx(1.0) and signal.gold_change == pytest.approx(-0.6)
    assert not detect_hacking(proxy, [1.0, 1.1, 1.2, 1.3], window=3).fired  # both rise: healthy
    assert not detect_hacking([1.5, 1.0, 0.5, 0.0], [1.0, 1.2, 1.0, 0.6], window=3).fired  # both fall
    assert not detect_hacking(proxy[:2], [1.0, 0.0], window=3).fired  # not enough evaluations yet
    # the earlier rise of gold is outside the window of 2
    assert detect_hacking(proxy, [0.0, 2.0, 1.9, 1.8], window=2).fired
    # a gold change smaller than min_change is noise
    assert not detect_hacking(proxy, [1.0, 1.0, 0.99, 0.98], window=3, min_change=0.05).fired
    with pytest.raises(ValueError, match="window"):
        detect_hacking(proxy, proxy, window=1)
    with pytest.raises(ValueError, match="evaluations"):
        detect_hacking(proxy, proxy[:3])


def longer(prompts, completions, **_):
    """The proxy: longer completions score higher."""
    return [len(text) / 10 for text in completions]


def shorter(prompts, completions, **_):
    """The gold: it penalises exactly what the proxy rewards."""
    return [-len(text) / 10 for text in completions]


def test_planted_run_games_the_proxy_and_raises_the_warning(tmp_path, capsys):
    from tether.algorithms.grpo import GRPOConfig, train_grpo
    from tether.config import load_config
    from tether.models.tiny import save_tiny_llama

    save_tiny_llama(tmp_path / "model")
    with (tmp_path / "tasks.jsonl").open("w") as handle:
        for i in range(16):
            handle.write(json.dumps({"prompt": f"Say something about {i}.", "answer": "-"}) + "\n")
    config = load_config(GRPOConfig, None, [
        f"model.path={tmp_path / 'model'}", f"data.train={tmp_path / 'tasks.jsonl'}",
        f"data.eval={tmp_path / 'tasks.jsonl'}", f"train.output_dir={tmp_path / 'runs'}", "train.run_name=planted",
        "train.progress=false", "train.bf16=false", "train.tensorboard=false",
        "grpo.rewards=[{name: 'test_reward_hacking:longer'}]",
        "grpo.gold={rewards: [{name: 'test_reward_hacking:shorter'}], window: 3}", "grpo.num_generations=8",
        "grpo.prompts_per_step=4", "grpo.max_new_tokens=8", "grpo.beta=0.01", "optim.lr=2e-2",
        "optim.schedule=constant", "train.max_steps=6", "train.eval_every=2"])
    train_grpo(config)

    evals = [row for row in read_metrics(config.run_dir()) if "eval/proxy_reward" in row]
    assert [row["step"] for row in evals] == [0, 2, 4, 6]
    proxy = [row["eval/proxy_reward"] for row in evals]
    gold = [row["eval/gold_reward"] for row in evals]
    assert gold == pytest.approx([-p for p in proxy])  # the planted relation, on the same samples
    assert proxy[-1] > proxy[0] + 0.2  # the policy learned to write longer
    assert evals[0]["eval/kl"] == pytest.approx(0.0, abs=1e-6) and evals[-1]["eval/kl"] > 0.1
    flags = [row["eval/reward_hacking"] for row in evals]
    assert flags[:2] == [0.0, 0.0] and 1.0 in flags  # needs 3 evaluations, then fires
    assert "possible reward hacking" in capsys.readouterr().err
    assert (config.run_dir() / PLOT_FILE).stat().st_size > 10_000


SEEN = []


def column_echo(prompts, completions, tag, **_):
    SEEN.append((list(prompts), list(tag)))
    return [float(t) for t in tag]


def test_several_samples_per_prompt_are_scored_with_their_own_prompt(tmp_path):
    from tether.audit.reward_hacking import RewardHackingMonitor
    from tether.models.tiny import tiny_llama
    from tether.rewards.base import RewardSpec

    model, tokenizer = tiny_llama(seed=0)
    SEEN.clear()
    monitor = RewardHackingMonitor(tmp_path, ["first", "second"], {"tag": [1, 5]},
                                   [RewardSpec("echo", column_echo)], max_new_tokens=3, samples_per_prompt=3)
    metrics = monitor.evaluate(model, tokenizer, 0, None)
    assert SEEN == [(["first"] * 3 + ["second"] * 3, [1, 1, 1, 5, 5, 5])]
    assert metrics["eval/proxy_reward"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        RewardHackingMonitor(tmp_path, ["x"], {}, [], samples_per_prompt=0)
