"""Bradley-Terry loss: hand-computed values, TRL 1.16 parity, metrics and calibration."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tether.losses.bradley_terry import bradley_terry_loss, bradley_terry_metrics, preference_calibration


def test_loss_by_hand():
    chosen = torch.tensor([1.0, 0.0, 2.0])
    rejected = torch.tensor([0.0, 0.0, 3.0])
    out = bradley_terry_loss(chosen, rejected)
    # per pair -log sigma(d) = log(1 + e^-d), d = 1, 0, -1
    expected = [math.log1p(math.exp(-1)), math.log(2), math.log1p(math.e)]
    torch.testing.assert_close(out.losses, torch.tensor(expected))
    assert out.loss.item() == pytest.approx(sum(expected) / 3)
    assert out.centering.item() == 0.0


def test_margin_and_centering_by_hand():
    chosen, rejected = torch.tensor([2.0, 1.0]), torch.tensor([0.0, -1.0])
    out = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 2.0]), center_coefficient=0.5)
    # d - m = 1, 0;  centering = 0.5 * mean((2 + 0)^2, (1 - 1)^2) = 0.5 * 2 = 1
    assert out.losses.tolist() == pytest.approx([math.log1p(math.exp(-1)), math.log(2)])
    assert out.centering.item() == pytest.approx(1.0)
    assert out.loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log(2)) / 2 + 1.0)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="must both be"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), margin=torch.zeros(2))


def trl_reward_loss(chosen, rejected, margin=None, center=None):
    """TRL 1.16's own ``RewardTrainer.compute_loss`` on a model whose logits are given."""
    from trl.trainer.reward_trainer import RewardTrainer

    logits = torch.cat([chosen, rejected]).unsqueeze(-1)  # (2B, 1), chosen rows first like TRL's collator

    class GivenLogits(torch.nn.Module):
        def forward(self, **_inputs):
            return SimpleNamespace(logits=logits)

    model = GivenLogits().train()
    identity = lambda x: x  # noqa: E731 — one process: gathers are identities
    trainer = SimpleNamespace(model=model, args=SimpleNamespace(center_rewards_coefficient=center),
                              accelerator=SimpleNamespace(gather=identity, gather_for_metrics=identity),
                              _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                              _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(logits.shape[0], 3, dtype=torch.long),
              "attention_mask": torch.ones(logits.shape[0], 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    loss = RewardTrainer.compute_loss(trainer, model, inputs)
    return loss, {key: values[-1] for key, values in trainer._metrics["train"].items()}


@pytest.mark.parametrize("with_margin,center", [(False, None), (True, None), (False, 0.01), (True, 0.3)])
def test_matches_trl_reward_trainer(with_margin, center):
    pytest.importorskip("trl")
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randn(16, generator=generator, dtype=torch.float64) * 2
    rejected = torch.randn(16, generator=generator, dtype=torch.float64) * 2
    margin = torch.rand(16, generator=generator, dtype=torch.float64) if with_margin else None

    ours_c, ours_r = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    ours = bradley_terry_loss(ours_c, ours_r, margin=margin, center_coefficient=center)
    ours.loss.backward()
    trl_c, trl_r = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    trl_loss, trl_metrics = trl_reward_loss(trl_c, trl_r, margin, center)
    trl_loss.backward()

    assert ours.loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    torch.testing.assert_close(ours_c.grad, trl_c.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_r.grad, trl_r.grad, atol=1e-5, rtol=0)
    metrics = bradley_terry_metrics(chosen, rejected)
    for key in ("accuracy", "margin", "mean_reward", "min_reward", "max_reward"):
        assert metrics[key] == pytest.approx(trl_metrics[key], abs=1e-5), key


def test_metrics_count_a_tie_as_wrong():
    metrics = bradley_terry_metrics(torch.tensor([1.0, 2.0, 0.5, 3.0]), torch.tensor([0.0, 2.0, 1.5, 1.0]))
    assert metrics["accuracy"] == 0.5  # pair 2 is a tie
    assert metrics["margin"] == pytest.approx((1 + 0 - 1 + 2) / 4)


def test_calibration_of_a_calibrated_and_an_overconfident_model():
    # sigma(d) = 0.75 on every pair and the model is right on 3 of 4 (one pair listed the other way):
    # perfectly calibrated.
    d = math.log(3.0)
    ece, table = preference_calibration(torch.tensor([d, d, d, -d]))
    assert ece == pytest.approx(0.0, abs=1e-7)  # float32 margins
    assert table == [{"bin": [0.7, 0.8], "pairs": 4, "confidence": pytest.approx(0.75), "accuracy": 0.75}]
    # Says 0.95 (log 19) but is right on half: ECE = |0.95 - 0.5| = 0.45.
    d = math.log(19.0)
    ece, table = preference_calibration(torch.tensor([d, -d]))
    assert ece == pytest.approx(0.45)
    assert table[0]["bin"] == [0.9, 1.0] and table[0]["accuracy"] == 0.5
