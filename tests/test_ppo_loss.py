"""PPO formulas: hand-computed values on small tensors, and TRL's PPOTrainer code replayed line by line.

TRL 1.16 no longer ships a PPO trainer (removed in PR #7020), so the TRL side below is a verbatim
transcription of trl/experimental/ppo/ppo_trainer.py (huggingface/trl @ 0062ee1, v1.10.0.dev0):
``masked_mean``, ``masked_var``, ``masked_whiten``, the reward construction, the GAE loop, and the
policy/value losses inside ``PPOTrainer.train``.
"""

import math

import pytest
import torch

from tether.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    approx_kl,
    explained_variance,
    gae,
    last_token_index,
    masked_var,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- hand values

def test_gae_three_steps_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=2: delta = 1 + 0 - 0.7 = 0.3;            A2 = 0.3
    # t=1: delta = 0 + 0.7 - 0.6 = 0.1;          A1 = 0.1 + 0.5 * 0.3 = 0.25
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1;          A0 = 0.1 + 0.5 * 0.25 = 0.225
    close(advantages, [[0.225, 0.25, 0.3]])
    close(returns, [[0.725, 0.85, 1.0]])


def test_gae_with_discount_and_right_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.2, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.3, 9.0]])  # row 2's last column is padding
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 1: A2 = 1 - 0.7 = 0.3; A1 = 0.9*0.7 - 0.6 + 0.45*0.3 = 0.165; A0 = 0.9*0.6 - 0.5 + 0.45*0.165 = 0.11425
    # row 2 ends at t=1 (V_2 = 0, r_2 ignored): A1 = 1 - 0.3 = 0.7; A0 = 0.2 + 0.27 - 0.1 + 0.45*0.7 = 0.685
    close(advantages, [[0.11425, 0.165, 0.3], [0.685, 0.7, 0.0]])
    close(returns, [[0.61425, 0.765, 1.0], [0.785, 1.0, 0.0]])


def test_token_rewards_put_the_score_on_the_last_real_token():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref_logps = torch.tensor([[-1.5, -1.0, -3.0], [-2.0, -1.0, -7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0]), logps, ref_logps, mask, kl_coef=0.1)
    # k1 = logps - ref_logps: row 1 (0.5, -1, 0), row 2 (1, 0, padding)
    close(kl, [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]])
    close(rewards, [[-0.05, 0.1, 2.0], [-0.1, -1.0, 0.0]])
    assert last_token_index(torch.tensor([[1, 1, 0], [0, 0, 0]])).tolist() == [1, -1]
    with pytest.raises(ValueError, match="needs ref_logps"):
        token_rewards(torch.tensor([2.0, -1.0]), logps, None, mask, kl_coef=0.1)
    no_kl, zero = token_rewards(torch.tensor([2.0, -1.0]), logps, None, mask, kl_coef=0.0)
    assert no_kl.tolist() == [[0.0, 0.0, 2.0], [0.0, -1.0, 0.0]] and not zero.any()


def test_value_loss_clipping_cases():
    old, target = torch.tensor([[0.5]]), torch.tensor([[1.0]])
    mask = torch.ones(1, 1, dtype=torch.bool)

    def case(v):
        v = torch.tensor([[v]], requires_grad=True)
        loss, metrics = value_loss(v, old, target, mask, cliprange_value=0.2)
        loss.backward()
        return loss.item(), metrics["vf_clipfrac"].item(), v.grad.item()

    # inside the clip range: 1/2 (0.6 - 1)^2 = 0.08, gradient v - R = -0.4
    assert case(0.6) == pytest.approx((0.08, 0.0, -0.4))
    # past V + c toward R: the clipped error (0.7 - 1)^2 = 0.09 is larger; no gradient
    assert case(0.9) == pytest.approx((0.045, 1.0, 0.0))
    # past V - c away from R: the unclipped error 0.81 is larger and keeps its gradient
    assert case(0.1) == pytest.approx((0.405, 0.0, -0.9))
    unclipped, _ = value_loss(torch.tensor([[0.9]]), old, target, mask, cliprange_value=None)
    assert unclipped.item() == pytest.approx(0.005)


def test_policy_loss_clips_the_ratio():
    old = torch.zeros(1, 3)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1]])).requires_grad_(True)  # ratios 1.5, 0.5, 1.1
    advantages = torch.tensor([[1.0, 1.0, -2.0]])
    loss, metrics = policy_loss(logps, old, advantages, torch.ones(1, 3, dtype=torch.bool), epsilon=0.2)
    # per token max(-A w, -A clip(w)): (-1.2, -0.5, 2.2); mean = 0.5/3
    assert loss.item() == pytest.approx(0.5 / 3)
    assert metrics["clipfrac"].item() == pytest.approx(1 / 3)  # only the first token was clipped
    loss.backward()
    # d/dlogp of -A w = -A w: token 1 clipped (0), token 2 -0.5, token 3 2.2; over 3 tokens
    close(logps.grad, [[0.0, -0.5 / 3, 2.2 / 3]])


def test_truncated_importance_weights_scale_each_tokens_clipped_term():
    """TIS in PPO (tether/losses/importance.py): the engine sampled with log-probs 0.7 nats below the
    trainer's on token 1 and 0.7 above on token 3; the weights min(exp(old - engine), 2) = (2, 1, 0.5)
    multiply the per-token clipped terms (-1.2, -0.5, 2.2) and their gradients, padding stays out."""
    from tether.losses.importance import truncated_importance_weights

    old = torch.zeros(1, 4)
    engine = torch.tensor([[-0.7, 0.0, math.log(2.0), 5.0]])  # token 4 is padding
    weights = truncated_importance_weights(old, engine, cap=2.0)
    close(weights[:, :3], [[2.0, 1.0, 0.5]])
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.0]])).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0, -2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    loss, metrics = policy_loss(logps, old, advantages, mask, epsilon=0.2, token_weights=weights)
    assert loss.item() == pytest.approx((2 * -1.2 + 1 * -0.5 + 0.5 * 2.2) / 3)
    assert metrics["importance_weight/mean"].item() == pytest.approx(3.5 / 3)
    assert metrics["clipfrac"].item() == pytest.approx(1 / 3)  # the weights do not change what is clipped
    loss.backward()
    close(logps.grad, [[0.0, -0.5 / 3, 0.5 * 2.2 / 3, 0.0]])
    unweighted, _ = policy_loss(logps, old, advantages, mask, epsilon=0.2,
                                token_weights=truncated_importance_weights(old, engine, cap=None))
    assert unweighted.item() == pytest.approx(0.5 / 3)  # no cap: no correction


def test_whiten_and_masked_var():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    assert masked_var(x, mask).item() == pytest.approx(1.0)  # unbiased over 1, 2, 3
    close(whiten(x, mask, eps=0.0), [[-1.0, 0.0, 1.0, 0.0]])
    close(whiten(x, mask, shift_mean=False, eps=0.0), [[1.0, 2.0, 3.0, 0.0]])


def test_approx_kl_and_explained_variance():
    old = torch.tensor([[0.0, 0.0, 5.0]])
    new = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    # k3 with log w = log 2: (2 - 1) - log 2; second token 0; mean over 2 tokens
    assert approx_kl(new, old, mask).item() == pytest.approx((1 - math.log(2)) / 2)
    assert approx_kl(new, old, mask, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2 / 2)
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    assert explained_variance(returns, returns, torch.ones(1, 3, dtype=torch.bool)) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 3) + 2, returns, torch.ones(1, 3, dtype=torch.bool)) == pytest.approx(0.0)


def test_kl_controllers():
    fixed = FixedKLController(0.1)
    assert fixed.update(100.0, 64) == 0.1
    adaptive = AdaptiveKLController(0.1, target=6.0, horizon=100)
    # KL 9 is 50% over target: error clipped to 0.2; beta *= 1 + 0.2 * 10 / 100
    assert adaptive.update(9.0, 10) == pytest.approx(0.1 * 1.02)
    # KL 4.5 is 25% under: error clipped to -0.2
    assert adaptive.update(4.5, 10) == pytest.approx(0.1 * 1.02 * 0.98)
    # KL 6.6 is 10% over: error 0.1
    assert adaptive.update(6.6, 50) == pytest.approx(0.1 * 1.02 * 0.98 * 1.05)


# ------------------------------------------------------------------- TRL's PPOTrainer, line by line

def trl_masked_mean(values, mask, axis=None):
    if axis is not None:
        return (values * mask).sum(axis=axis) / mask.sum(axis=axis)
    return (values * mask).sum() / mask.sum()


def trl_masked_var(values, mask, unbiased=True):
    mean = trl_masked_mean(values, mask)
    centered_values = values - mean
    variance = trl_masked_mean(centered_values**2, mask)
    if unbiased:
        mask_sum = mask.sum()
        bessel_correction = mask_sum / (mask_sum - 1)
        variance = variance * bessel_correction
    return variance


def trl_masked_whiten(values, mask, shift_mean=True):
    mean, var = trl_masked_mean(values, mask), trl_masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


def trl_rewards_and_advantages(logprobs, ref_logprobs, values, scores, sequence_lengths, kl_coef, gamma, lam):
    """PPOTrainer.train, steps 4 to 6 (k1 estimator, whiten_rewards=False)."""
    INVALID_LOGPROB = 1.0
    response_idxs = torch.arange(logprobs.shape[1]).repeat(logprobs.shape[0], 1)
    padding_mask = response_idxs > sequence_lengths.unsqueeze(1)
    logprobs = torch.masked_fill(logprobs, padding_mask, INVALID_LOGPROB)
    ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, INVALID_LOGPROB)
    sequence_lengths_p1 = sequence_lengths + 1
    padding_mask_p1 = response_idxs > (sequence_lengths_p1.unsqueeze(1))
    values = torch.masked_fill(values, padding_mask_p1, 0)
    logr = ref_logprobs - logprobs
    kl = -logr
    non_score_reward = -kl_coef * kl
    rewards = non_score_reward.clone()
    actual_start = torch.arange(rewards.size(0))
    actual_end = torch.where(sequence_lengths_p1 < rewards.size(1), sequence_lengths_p1, sequence_lengths)
    rewards[actual_start, actual_end] += scores
    lastgaelam = 0
    advantages_reversed = []
    gen_length = logprobs.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    returns = advantages + values
    advantages = trl_masked_whiten(advantages, ~padding_mask)
    advantages = torch.masked_fill(advantages, padding_mask, 0)
    return rewards, advantages, returns


def trl_losses(new_logprobs, mb_logprobs, mb_advantage, vpred, mb_values, mb_return, padding_mask, padding_mask_p1,
               cliprange, cliprange_value, vf_coef):
    vpredclipped = torch.clamp(vpred, mb_values - cliprange_value, mb_values + cliprange_value)
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss_max = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * trl_masked_mean(vf_loss_max, ~padding_mask_p1)
    vf_clipfrac = trl_masked_mean((vf_losses2 > vf_losses1).float(), ~padding_mask_p1)
    logprobs_diff = new_logprobs - mb_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    pg_loss = trl_masked_mean(pg_loss_max, ~padding_mask)
    pg_clipfrac = trl_masked_mean((pg_losses2 > pg_losses).float(), ~padding_mask)
    return pg_loss + vf_coef * vf_loss, pg_loss, vf_loss, pg_clipfrac, vf_clipfrac


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    shape = (4, 6)
    return {
        "logps": -torch.rand(shape, generator=generator) * 3,
        "ref_logps": -torch.rand(shape, generator=generator) * 3,
        "values": torch.randn(shape, generator=generator),
        "scores": torch.randn(shape[0], generator=generator),
        "new_logps": -torch.rand(shape, generator=generator) * 3,
        "new_values": torch.randn(shape, generator=generator),
    }


def test_rewards_and_gae_match_trl_on_full_width_rows(batch):
    """Rows that fill the width: TRL puts the score on the last token too, so everything matches."""
    full = torch.full((4,), 5)
    mask = torch.ones(4, 6, dtype=torch.bool)
    trl_rewards, trl_advantages, trl_returns = trl_rewards_and_advantages(
        batch["logps"], batch["ref_logps"], batch["values"], batch["scores"], full, 0.05, 1.0, 0.95)
    rewards, _ = token_rewards(batch["scores"], batch["logps"], batch["ref_logps"], mask, kl_coef=0.05)
    advantages, returns = gae(rewards, batch["values"], mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(rewards, trl_rewards)
    torch.testing.assert_close(returns, trl_returns)
    torch.testing.assert_close(whiten(advantages, mask), trl_advantages)


def test_gae_matches_trl_with_padding_when_given_the_same_rewards(batch):
    """With padding, TRL scores one token later (on the first padding position, kept in its value
    mask); handed the same per-token rewards, its GAE loop and ours agree on every real token."""
    lengths = torch.tensor([5, 2, 0, 3])  # index of each row's last real token
    mask = torch.arange(6)[None] <= lengths[:, None]  # (4, 6)
    rewards, _ = token_rewards(batch["scores"], batch["logps"], batch["ref_logps"], mask, kl_coef=0.05)
    values = torch.where(mask, batch["values"], 0.0)

    trl_advantages = []
    lastgaelam = 0
    for t in reversed(range(6)):
        nextvalues = values[:, t + 1] if t < 5 else 0.0
        lastgaelam = rewards[:, t] + 1.0 * nextvalues - values[:, t] + 1.0 * 0.9 * lastgaelam
        trl_advantages.append(lastgaelam)
    trl_advantages = torch.stack(trl_advantages[::-1], axis=1)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.9)
    torch.testing.assert_close(advantages, torch.where(mask, trl_advantages, 0.0))
    torch.testing.assert_close(whiten(advantages, mask),
                               torch.masked_fill(trl_masked_whiten(trl_advantages, mask), ~mask, 0))
    torch.testing.assert_close(whiten(rewards, mask, shift_mean=False),
                               torch.masked_fill(trl_masked_whiten(rewards, mask, shift_mean=False), ~mask, 0))
    # TRL's own layout, for the record: the score lands one position after the last real token.
    trl_rewards, _, _ = trl_rewards_and_advantages(batch["logps"], batch["ref_logps"], batch["values"],
                                                   batch["scores"], lengths, 0.05, 1.0, 0.9)
    assert trl_rewards[1, 3].item() == pytest.approx(batch["scores"][1].item())  # padding: KL 0 there


def test_losses_match_trl(batch):
    lengths = torch.tensor([5, 2, 4, 3])
    mask = torch.arange(6)[None] <= lengths[:, None]
    advantages = torch.where(mask, torch.randn(4, 6, generator=torch.Generator().manual_seed(1)), 0.0)
    returns = batch["values"] + advantages
    # TRL's value mask reaches one past the last real token; pass it the same mask as ours.
    total, pg, vf, pg_clipfrac, vf_clipfrac = trl_losses(
        batch["new_logps"], batch["logps"], advantages, batch["new_values"], batch["values"], returns,
        ~mask, ~mask, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    our_pg, pg_metrics = policy_loss(batch["new_logps"], batch["logps"], advantages, mask, epsilon=0.2)
    our_vf, vf_metrics = value_loss(batch["new_values"], batch["values"], returns, mask, cliprange_value=0.2)
    torch.testing.assert_close(our_pg, pg)
    torch.testing.assert_close(our_vf, vf)
    torch.testing.assert_close(our_pg + 0.1 * our_vf, total)
    torch.testing.assert_close(pg_metrics["clipfrac"], pg_clipfrac)
    torch.testing.assert_close(vf_metrics["vf_clipfrac"], vf_clipfrac)
    assert 0 < pg_clipfrac < 1 and 0 < vf_clipfrac < 1  # both branches of each max are exercised
