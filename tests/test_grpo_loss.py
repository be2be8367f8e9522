from __future__ import annotations

import math

import pytest
import torch

from tether.losses.grpo import (
    group_advantages,
    overlong_penalty,
    policy_loss,
    rloo_advantages,
    zero_variance_groups,
)
from tether.losses.importance import truncated_importance_weights

E = math.e
NAN = float("nan")


def _close(actual: torch.Tensor, expected, atol: float = 1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------- advantages

# Two prompts, three completions each: [0, 1, 2] (mean 1) and [3, 3, 3] (mean 3, no spread).
REWARDS = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0, 3.0])


def test_group_advantages_divide_by_the_bessel_corrected_group_std():
    # group 1: std = sqrt(((0-1)^2 + 0 + (2-1)^2) / (3 - 1)) = 1, so A = [-1, 0, 1] / (1 + 1e-4)
    # group 2: r - mean = 0 and std = 0: A = 0 / 1e-4 = 0. (A biased std, sqrt(2/3), would give +-1.2246.)
    _close(group_advantages(REWARDS, 3), [-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0])
    _close(group_advantages(REWARDS, 3), [-0.999900, 0.0, 0.999900, 0.0, 0.0, 0.0])


def test_group_advantages_with_batch_std():
    # deviations from group means: [-1, 0, 1, 0, 0, 0]; batch mean 2, squared deviations [4, 1, 0, 1, 1, 1]
    # -> batch std = sqrt(8 / 5) = 1.264911; A = deviation / 1.265011 = [-0.790507, 0, 0.790507, 0, 0, 0]
    std = math.sqrt(8 / 5)
    _close(group_advantages(REWARDS, 3, scale="batch"), [-1 / (std + 1e-4), 0.0, 1 / (std + 1e-4), 0.0, 0.0, 0.0])
    _close(group_advantages(REWARDS, 3, scale="batch"), [-0.790507, 0.0, 0.790507, 0.0, 0.0, 0.0])


def test_group_advantages_unscaled_for_dr_grpo():
    _close(group_advantages(REWARDS, 3, scale="none"), [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def test_integer_rewards_are_accepted():
    torch.testing.assert_close(group_advantages(REWARDS.long(), 3), group_advantages(REWARDS, 3))
    torch.testing.assert_close(rloo_advantages(REWARDS.long(), 3), rloo_advantages(REWARDS, 3))


def test_group_advantages_eps():
    # group 1 std is 1: A = [-1, 0, 1] / (1 + 1) with eps = 1
    _close(group_advantages(REWARDS[:3], 3, eps=1.0), [-0.5, 0.0, 0.5])


def test_unscorable_rewards_are_left_out_and_get_zero_advantage():
    # group [0, 2, NaN]: mean 1, std sqrt((1 + 1) / 1) = sqrt(2) over the two scored completions
    # -> A = [-1, 1] / (1.414214 + 1e-4) = [-0.707057, 0.707057], and 0 for the NaN one
    rewards = torch.tensor([0.0, 2.0, NAN])
    _close(group_advantages(rewards, 3), [-0.707057, 0.707057, 0.0])
    _close(group_advantages(rewards, 3, scale="none"), [-1.0, 1.0, 0.0])


def test_one_completion_per_prompt_gives_zero_advantages():
    # r - mean = 0 for a group of one (TRL gives the same: std is taken as 0)
    _close(group_advantages(torch.tensor([1.0, 2.0]), 1), [0.0, 0.0])
    _close(group_advantages(torch.tensor([1.0]), 1, scale="batch"), [0.0])


def test_rloo_advantages_use_the_other_completions_mean():
    # group 1: baselines [(1+2)/2, (0+2)/2, (0+1)/2] = [1.5, 1, 0.5] -> A = [-1.5, 0, 1.5]
    # (= G/(G-1) times the group-mean deviation); group 2: every baseline is 3 -> A = 0
    _close(rloo_advantages(REWARDS, 3), [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0])


def test_rloo_advantages_normalized_over_the_batch():
    # A = [-1.5, 0, 1.5, 0, 0, 0]: mean 0, std sqrt(4.5 / 5) = 0.948683 -> A / 0.948783 = +-1.580972
    scaled = 1.5 / (math.sqrt(0.9) + 1e-4)
    _close(rloo_advantages(REWARDS, 3, normalize=True), [-scaled, 0.0, scaled, 0.0, 0.0, 0.0])
    _close(rloo_advantages(REWARDS, 3, normalize=True), [-1.580972, 0.0, 1.580972, 0.0, 0.0, 0.0], atol=1e-5)


def test_rloo_advantages_skip_unscorable_rewards():
    # group [0, 2, NaN]: baselines over the other *scored* completion: [2, 0] -> A = [-2, 2], NaN -> 0
    _close(rloo_advantages(torch.tensor([0.0, 2.0, NAN]), 3), [-2.0, 2.0, 0.0])


def test_zero_variance_groups_and_dynamic_sampling():
    # groups of 2: [1, 1] same, [0, 1] differ, [0.5, 0.5] same, [NaN, 1] one score only -> no signal
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, NAN, 1.0])
    zero_variance = zero_variance_groups(rewards, 2)
    assert zero_variance.tolist() == [True, False, True, True]
    assert zero_variance.float().mean().item() == 0.75  # the diagnostic TRL logs as frac_reward_zero_std
    keep = ~zero_variance.repeat_interleave(2)  # DAPO dynamic sampling keeps only informative groups
    assert rewards[keep].tolist() == [0.0, 1.0]


def test_zero_variance_tolerates_rounding():
    # 0.1 + 0.2 != 0.3 in floating point, but the two completions earned the same reward
    rewards = torch.tensor([0.1 + 0.2, 0.3], dtype=torch.float64)
    assert rewards[0] != rewards[1]
    assert zero_variance_groups(rewards, 2).tolist() == [True]


@pytest.mark.parametrize("call, message", [
    (lambda: group_advantages(REWARDS, 3, scale="z"), "unknown advantage scale 'z'"),
    (lambda: group_advantages(REWARDS, 4), "6 rewards do not split into groups of 4"),
    (lambda: group_advantages(REWARDS.view(2, 3), 3), r"rewards must be 1-D"),
    (lambda: group_advantages(REWARDS, 0), "group_size must be a positive int"),
    (lambda: rloo_advantages(REWARDS, 1), "needs group_size >= 2"),
    (lambda: zero_variance_groups(REWARDS, 5), "6 rewards do not split into groups of 5"),
])
def test_advantage_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------------------ overlong penalty

def test_overlong_penalty_in_its_three_regions():
    # L_max 20, buffer 8: no penalty up to 12, then (12 - L) / 8 down to -1 at 20, and -1 beyond
    #   10 -> 0, 12 -> 0, 13 -> -1/8, 16 -> -4/8, 20 -> -8/8, 21 -> -1, 100 -> -1
    penalty = overlong_penalty(torch.tensor([10, 12, 13, 16, 20, 21, 100]), max_completion_length=20, buffer_length=8)
    assert penalty.dtype == torch.float32
    _close(penalty, [0.0, 0.0, -0.125, -0.5, -1.0, -1.0, -1.0])


def test_overlong_penalty_without_buffer_is_a_hard_cut():
    _close(overlong_penalty(torch.tensor([20, 21]), 20, 0), [0.0, -1.0])


@pytest.mark.parametrize("max_length, buffer, message", [
    (20, 21, r"buffer_length must lie in \[0, max_completion_length=20\]"),
    (20, -1, r"buffer_length must lie in \[0, max_completion_length=20\]"),
    (0, 0, "max_completion_length must be positive"),
])
def test_overlong_penalty_bad_arguments_raise(max_length, buffer, message):
    with pytest.raises(ValueError, match=message):
        overlong_penalty(torch.tensor([5]), max_length, buffer)


# ---------------------------------------------------------------------------------------------- policy loss

def _loss(logps, old_logps, advantages, mask, **kwargs):
    """Loss, gradient with respect to logps, and metrics."""
    logps = torch.tensor(logps, requires_grad=True)
    loss, metrics = policy_loss(logps, torch.tensor(old_logps), torch.tensor(advantages), torch.tensor(mask),
                                **kwargs)
    loss.backward()
    return loss.detach(), logps.grad, metrics


# On policy (old = logps), every ratio is 1 and no clipping happens: each token's loss is -A_i, and its
# gradient -A_i times the weight the aggregation gives that token. Sequence 0 has 3 tokens, sequence 1
# has 1 token and two padding positions (holding junk the mask must hide). A = [1, -2].
ON_POLICY = dict(logps=[[-1.0, -2.0, -0.5], [-1.5, 50.0, 50.0]], advantages=[1.0, -2.0],
                 mask=[[1, 1, 1], [1, 0, 0]])


def _on_policy(**kwargs):
    return _loss(ON_POLICY["logps"], ON_POLICY["logps"], ON_POLICY["advantages"], ON_POLICY["mask"], **kwargs)


def test_grpo_averages_tokens_then_sequences():
    # sequence means: [-1, 2] -> loss 0.5; token weights 1/(3*2) and 1/(1*2) -> grad [-1/6]*3 and [2/2 = 1]
    loss, grad, metrics = _on_policy(loss_type="grpo")
    _close(loss, 0.5)
    _close(grad, [[-1 / 6, -1 / 6, -1 / 6], [1.0, 0.0, 0.0]])
    _close(metrics["ratio/mean"], 1.0)
    _close(metrics["clip_ratio/region_mean"], 0.0)
    assert "kl" not in metrics  # beta = 0 and no reference model


def test_truncated_importance_weights_are_the_capped_ratio_of_trainer_to_engine():
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    engine = torch.tensor([[-1.0, -2.0 + math.log(2), -0.5 - math.log(4)]])  # the engine: 1x, 2x, 1/4 as likely
    _close(truncated_importance_weights(old, engine, cap=2.0), [[1.0, 0.5, 2.0]])  # 4 capped at 2
    _close(truncated_importance_weights(old, engine, cap=10.0), [[1.0, 0.5, 4.0]])
    assert truncated_importance_weights(old, engine, cap=None) is None


def test_token_weights_scale_each_tokens_policy_gradient_term_but_not_the_kl():
    weights = torch.tensor([[1.0, 0.5, 2.0], [3.0, 9.0, 9.0]])
    loss, grad, metrics = _on_policy(loss_type="grpo", token_weights=weights)
    # sequence means: -(1 + 0.5 + 2) / 3 = -7/6 and 2 * 3 = 6 -> (-7/6 + 6) / 2
    _close(loss, (-7 / 6 + 6) / 2)
    _close(grad, [[-1 / 6, -0.5 / 6, -2 / 6], [3.0, 0.0, 0.0]])
    _close(metrics["importance_weight/mean"], (1 + 0.5 + 2 + 3) / 4)
    # With beta > 0 the KL term is added after the weighting: the same KL either way.
    ref = [[-1.2, -2.0, -0.4], [-1.5, 50.0, 50.0]]
    plain, _, _ = _loss(ON_POLICY["logps"], ON_POLICY["logps"], ON_POLICY["advantages"], ON_POLICY["mask"],
                        loss_type="grpo", beta=0.1, ref_logps=torch.tensor(ref))
    weighted, _, _ = _loss(ON_POLICY["logps"], ON_POLICY["logps"], ON_POLICY["advantages"], ON_POLICY["mask"],
                           loss_type="grpo", beta=0.1, ref_logps=torch.tensor(ref), token_weights=weights)
    _close(weighted - plain, (-7 / 6 + 6) / 2 - 0.5)


def test_bnpo_averages_over_the_batch_tokens():
    # (-1 * 3 + 2 * 1) / 4 tokens = -0.25; every token weighs 1/4 -> grad [-0.25]*3 and [0.5]
    loss, grad, _ = _on_policy(loss_type="bnpo")
    _close(loss, -0.25)
    _close(grad, [[-0.25, -0.25, -0.25], [0.5, 0.0, 0.0]])


def test_dapo_averages_over_the_batch_tokens_or_num_tokens():
    # this batch alone: like bnpo, -1 / 4; with num_tokens = 8 (the whole generation batch): -1 / 8
    loss, grad, _ = _on_policy(loss_type="dapo")
    _close(loss, -0.25)
    loss, grad, _ = _on_policy(loss_type="dapo", num_tokens=8)
    _close(loss, -0.125)
    _close(grad, [[-0.125, -0.125, -0.125], [0.25, 0.0, 0.0]])


def test_dapo_micro_batch_losses_add_up_to_the_batch_loss():
    # Two micro-batches of one sequence each, both divided by the 4 tokens of the whole batch.
    logps, mask = torch.tensor(ON_POLICY["logps"]), torch.tensor(ON_POLICY["mask"])
    advantages = torch.tensor(ON_POLICY["advantages"])
    old_logps = logps - torch.tensor([[0.5, -0.1, 0.0], [0.3, 0.0, 0.0]])
    whole, _ = policy_loss(logps, old_logps, advantages, mask, loss_type="dapo")
    parts = [policy_loss(logps[i:i + 1], old_logps[i:i + 1], advantages[i:i + 1], mask[i:i + 1], loss_type="dapo",
                         num_tokens=4)[0] for i in range(2)]
    _close(parts[0] + parts[1], whole.item())


def test_dr_grpo_divides_by_a_constant():
    # (-3 + 2) / (B * max_completion_length) = -1 / (2 * 4) = -0.125; each token weighs 1/8
    loss, grad, _ = _on_policy(loss_type="dr_grpo", max_completion_length=4)
    _close(loss, -0.125)
    _close(grad, [[-0.125, -0.125, -0.125], [0.25, 0.0, 0.0]])


# Off policy: sequence 0 has log-ratios [1, 1, 1] (ratio e), sequence 1 has [-1, -1, -1] (ratio e^-1).
CLIPPED = dict(logps=[[-1.0, -1.0, -1.0], [-3.0, -3.0, -3.0]], old_logps=[[-2.0, -2.0, -2.0], [-2.0, -2.0, -2.0]],
               mask=[[1, 1, 1], [1, 1, 1]])


def test_clipping_removes_the_gradient_where_the_ratio_left_the_trust_region():
    # A = [1, -1]. Sequence 0: ratio e, clipped ratio 1.2; objective -min(e * 1, 1.2 * 1) = -1.2, no gradient.
    # Sequence 1: ratio e^-1 = 0.368, clipped 0.8; -min(-0.368, -0.8) = 0.8, no gradient.
    # loss = (-1.2 + 0.8) / 2 = -0.2
    loss, grad, metrics = _loss(**CLIPPED, advantages=[1.0, -1.0], loss_type="grpo")
    _close(loss, -0.2)
    _close(grad, torch.zeros(2, 3))
    _close(metrics["clip_ratio/high_mean"], 0.5)  # the 3 tokens of sequence 0, out of 6
    _close(metrics["clip_ratio/low_mean"], 0.5)
    _close(metrics["clip_ratio/region_mean"], 1.0)
    _close(metrics["ratio/mean"], (E + 1 / E) / 2)  # cosh(1) = 1.543081


def test_clipping_keeps_the_pessimistic_unclipped_term():
    # A = [-1, 1]. Sequence 0: -min(-e, -1.2) = e, unclipped; sequence 1: -min(0.368, 0.8) = -0.368, unclipped.
    # loss = (e - e^-1) / 2 = sinh(1) = 1.175201; d/dlogp of -ratio * A / (3 * 2) = [e/6]*3 and [-e^-1/6]*3
    loss, grad, metrics = _loss(**CLIPPED, advantages=[-1.0, 1.0], loss_type="grpo")
    _close(loss, 1.175201)
    _close(grad, [[E / 6] * 3, [-1 / E / 6] * 3])
    _close(metrics["clip_ratio/region_mean"], 0.0)  # the ratios are out of range, but the clip did not bind


def test_dapo_clip_higher():
    # epsilon_high 0.28, A = [1, -1]: sequence 0 tokens give -min(e, 1.28) = -1.28, sequence 1 tokens 0.8
    # token mean = (3 * -1.28 + 3 * 0.8) / 6 = -0.24
    loss, _, _ = _loss(**CLIPPED, advantages=[1.0, -1.0], loss_type="dapo", epsilon_high=0.28)
    _close(loss, -0.24)


def test_gspo_uses_one_length_normalized_ratio_per_sequence():
    # Sequence 0: log-ratios [1, 0, -1] average 0 -> ratio 1, inside the clip range; A = 1 -> loss -1,
    #   and d/dlogp_t of -exp(mean log-ratio) = -1/3 per token, halved by the mean over 2 sequences: -1/6.
    #   (Token-level ratios [e, 1, e^-1] would clip the first token: -(1.2 + 1 + 0.368) / 3 = -0.855970.)
    # Sequence 1: log-ratios [1, 1] over its 2 tokens (padding junk ignored) -> ratio e, clipped to 1.2
    #   with A = 1 -> loss -1.2, no gradient.  gspo loss = (-1 - 1.2) / 2 = -1.1
    logps = [[-1.0, -2.0, -3.0], [-1.0, -1.0, 50.0]]
    old_logps = [[-2.0, -2.0, -2.0], [-2.0, -2.0, 0.0]]
    mask = [[1, 1, 1], [1, 1, 0]]
    loss, grad, metrics = _loss(logps, old_logps, [1.0, 1.0], mask, loss_type="gspo")
    _close(loss, -1.1)
    _close(grad, [[-1 / 6, -1 / 6, -1 / 6], [0.0, 0.0, 0.0]])
    _close(metrics["clip_ratio/high_mean"], 0.5)  # one sequence of two
    _close(metrics["ratio/mean"], (1 + E) / 2)
    token_level, _, _ = _loss(logps, old_logps, [1.0, 1.0], mask, loss_type="grpo")
    _close(token_level, (-(1.2 + 1 + 1 / E) / 3 - 1.2) / 2)


# KL: on policy, logps [-1, -2], ref_logps [-2, -1] -> log r = ref - logps = [-1, 1], A = 0
# k3 = [e^-1 - 1 + 1, e - 1 - 1] = [0.367879, 0.718282], mean 0.543081
KL = dict(logps=[[-1.0, -2.0]], old_logps=[[-1.0, -2.0]], advantages=[0.0], mask=[[1, 1]])


def test_kl_penalty_with_bias_correction():
    # loss = beta * mean k3 = 0.1 * 0.543081. With the ratio w as a factor, d/dlogp (w k3) at w = 1 is
    # (1 - r) + k3 = -log r = [1, -1], so grad = 0.1 * [1, -1] / 2 tokens = [0.05, -0.05]
    loss, grad, metrics = _loss(**KL, loss_type="grpo", beta=0.1, ref_logps=torch.tensor([[-2.0, -1.0]]))
    _close(loss, 0.0543081)
    _close(grad, [[0.05, -0.05]])
    _close(metrics["kl"], 0.543081)


def test_kl_penalty_plain_k3():
    # without the factor w: d k3 / d logp = 1 - r -> grad = 0.1 * [1 - e^-1, 1 - e] / 2 = [0.031606, -0.085914]
    loss, grad, _ = _loss(**KL, loss_type="grpo", beta=0.1, ref_logps=torch.tensor([[-2.0, -1.0]]),
                          kl_bias_correction=False)
    _close(loss, 0.0543081)
    _close(grad, [[0.031606, -0.085914]])


def test_kl_is_logged_but_not_added_when_beta_is_zero():
    loss, grad, metrics = _loss(**KL, loss_type="grpo", ref_logps=torch.tensor([[-2.0, -1.0]]))
    _close(loss, 0.0)
    _close(grad, [[0.0, 0.0]])
    _close(metrics["kl"], 0.543081)


def test_no_gradient_reaches_old_or_reference_logps():
    old_logps = torch.tensor(CLIPPED["old_logps"], requires_grad=True)
    ref_logps = torch.zeros(2, 3, requires_grad=True)
    logps = torch.tensor(CLIPPED["logps"], requires_grad=True)
    loss, _ = policy_loss(logps, old_logps, torch.tensor([-1.0, 1.0]), torch.tensor(CLIPPED["mask"]),
                          loss_type="grpo", beta=0.1, ref_logps=ref_logps)
    loss.backward()
    assert old_logps.grad is None and ref_logps.grad is None and logps.grad is not None


def test_bool_int_and_float_masks_agree():
    logps, old_logps = torch.tensor(CLIPPED["logps"]), torch.tensor(CLIPPED["old_logps"]) + 0.9
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    losses = [policy_loss(logps, old_logps, torch.tensor([1.0, -1.0]), m, loss_type="grpo")[0]
              for m in (mask, mask.bool(), mask.float())]
    assert losses[0] == losses[1] == losses[2]


@pytest.mark.parametrize("change, message", [
    ({"loss_type": "ppo"}, "unknown GRPO loss_type 'ppo'"),
    ({"mask": torch.ones(2, 2)}, r"mask must have the shape of logps \(2, 3\), got \(2, 2\)"),
    ({"old_logps": torch.zeros(2, 4)}, r"old_logps must have the shape of logps"),
    ({"ref_logps": torch.zeros(3, 3), "beta": 0.1}, r"ref_logps must have the shape of logps"),
    ({"advantages": torch.zeros(2, 3)}, r"advantages must be one per sequence, shape \(2,\)"),
    ({"logps": torch.zeros(3)}, r"logps must be per-token, shape \(B, T\)"),
    ({"beta": 0.04}, "beta=0.04 adds a KL penalty to the reference model, so ref_logps are needed"),
    ({"beta": -0.1}, "beta must be non-negative"),
    ({"epsilon_low": 1.0}, r"epsilon_low must lie in \[0, 1\)"),
    ({"epsilon_high": -0.1}, "epsilon_high must be non-negative"),
    ({"loss_type": "dr_grpo"}, "max_completion_length"),
    ({"num_tokens": 100}, "num_tokens sets the normalizer of loss_type 'dapo' only"),
])
def test_policy_loss_bad_arguments_raise(change, message):
    kwargs = dict(logps=torch.zeros(2, 3), old_logps=torch.zeros(2, 3), advantages=torch.zeros(2),
                  mask=torch.ones(2, 3), loss_type="grpo")
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        policy_loss(**kwargs)
