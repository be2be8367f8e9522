from __future__ import annotations

import math

import pytest
import torch

from tether.losses.dpo import DPOOutput, dpo_loss, dpo_metrics

# Two preference pairs used throughout:
#   policy chosen  [-1.0, -2.0]   ref chosen  [-1.5, -2.0]  -> rho_c = [ 0.5, 0.0]
#   policy rejected[-3.0, -1.0]   ref rejected[-2.5, -2.0]  -> rho_r = [-0.5, 1.0]
#   h = rho_c - rho_r = [1.0, -1.0]
POLICY_CHOSEN = [-1.0, -2.0]
POLICY_REJECTED = [-3.0, -1.0]
REF_CHOSEN = [-1.5, -2.0]
REF_REJECTED = [-2.5, -2.0]

# -log sigma(z) = log(1 + e^-z)
SOFTPLUS_MINUS_HALF = math.log1p(math.exp(-0.5))  # -log sigma(0.5)  = 0.474077
SOFTPLUS_PLUS_HALF = math.log1p(math.exp(0.5))  # -log sigma(-0.5) = 0.974077


def _logps(requires_grad: bool = False):
    tensors = [torch.tensor(v, requires_grad=requires_grad) for v in (POLICY_CHOSEN, POLICY_REJECTED)]
    return tensors + [torch.tensor(REF_CHOSEN), torch.tensor(REF_REJECTED)]


def _close(actual: torch.Tensor, expected: list[float]):
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=1e-6)


def test_sigmoid():
    # beta h = [0.5, -0.5]; L = -log sigma(beta h) = [log(1+e^-0.5), log(1+e^0.5)] = [0.474077, 0.974077]
    out = dpo_loss(*_logps(), beta=0.5)
    _close(out.losses, [SOFTPLUS_MINUS_HALF, SOFTPLUS_PLUS_HALF])
    _close(out.losses, [0.474077, 0.974077])


def test_sigmoid_label_smoothing_is_conservative_dpo():
    # eps = 0.1: L = -(0.9) log sigma(beta h) - 0.1 log sigma(-beta h)
    #   pair 1: 0.9 * 0.474077 + 0.1 * 0.974077 = 0.524077
    #   pair 2: 0.9 * 0.974077 + 0.1 * 0.474077 = 0.924077
    out = dpo_loss(*_logps(), beta=0.5, label_smoothing=0.1)
    _close(out.losses, [0.9 * SOFTPLUS_MINUS_HALF + 0.1 * SOFTPLUS_PLUS_HALF,
                        0.9 * SOFTPLUS_PLUS_HALF + 0.1 * SOFTPLUS_MINUS_HALF])
    _close(out.losses, [0.524077, 0.924077])


def test_robust():
    # eps = 0.1: L = [0.9 * (-log sigma(beta h)) + 0.1 * log sigma(-beta h)] / 0.8
    #   pair 1: (0.9 * 0.474077 - 0.1 * 0.974077) / 0.8 = 0.411577
    #   pair 2: (0.9 * 0.974077 - 0.1 * 0.474077) / 0.8 = 1.036577
    out = dpo_loss(*_logps(), beta=0.5, loss_type="robust", label_smoothing=0.1)
    _close(out.losses, [(0.9 * SOFTPLUS_MINUS_HALF - 0.1 * SOFTPLUS_PLUS_HALF) / 0.8,
                        (0.9 * SOFTPLUS_PLUS_HALF - 0.1 * SOFTPLUS_MINUS_HALF) / 0.8])
    _close(out.losses, [0.411577, 1.036577])


def test_robust_without_smoothing_equals_sigmoid():
    torch.testing.assert_close(dpo_loss(*_logps(), beta=0.5, loss_type="robust").losses,
                               dpo_loss(*_logps(), beta=0.5).losses)


def test_ipo():
    # beta = 0.5 -> 1/(2 beta) = 1; L = (h - 1)^2 = [(1-1)^2, (-1-1)^2] = [0, 4]
    _close(dpo_loss(*_logps(), beta=0.5, loss_type="ipo").losses, [0.0, 4.0])


def test_hinge():
    # beta = 2: L = relu(1 - 2h) = [relu(-1), relu(3)] = [0, 3]
    _close(dpo_loss(*_logps(), beta=2.0, loss_type="hinge").losses, [0.0, 3.0])


def test_reference_free_ignores_reference_logps():
    # ref = 0: h = [-1 - -3, -2 - -1] = [2, -1]; beta h = [1, -0.5]
    # L = [log(1+e^-1), log(1+e^0.5)] = [0.313262, 0.974077]; rewards = beta * policy logps
    out = dpo_loss(*_logps(), beta=0.5, reference_free=True)
    _close(out.losses, [math.log1p(math.exp(-1.0)), SOFTPLUS_PLUS_HALF])
    _close(out.chosen_rewards, [-0.5, -1.0])
    _close(out.rejected_rewards, [-1.5, -0.5])


def test_rewards_are_beta_times_log_ratios_and_detached():
    # chosen = 0.5 * [0.5, 0.0] = [0.25, 0]; rejected = 0.5 * [-0.5, 1.0] = [-0.25, 0.5]
    out = dpo_loss(*_logps(requires_grad=True), beta=0.5)
    assert isinstance(out, DPOOutput)
    _close(out.chosen_rewards, [0.25, 0.0])
    _close(out.rejected_rewards, [-0.25, 0.5])
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_sigmoid_gradient():
    # dL/d logpi(y_c) = -beta sigma(-beta h) = [-0.5 sigma(-0.5), -0.5 sigma(0.5)] = [-0.188771, -0.311229]
    # dL/d logpi(y_r) is its negative.
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = _logps(requires_grad=True)
    dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5).losses.sum().backward()
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    _close(policy_chosen.grad, [-0.5 * sigmoid(-0.5), -0.5 * sigmoid(0.5)])
    _close(policy_chosen.grad, [-0.188771, -0.311229])
    _close(policy_rejected.grad, [0.5 * sigmoid(-0.5), 0.5 * sigmoid(0.5)])


def test_metrics_use_trl_names():
    # Third pair: rho_c = 1.0, rho_r = -1.0 -> rewards 0.5 / -0.5 at beta 0.5.
    # chosen  = [0.25, 0.0, 0.5]  -> mean 0.25
    # rejected= [-0.25, 0.5, -0.5] -> mean -1/12
    # margins = [0.5, -0.5, 1.0] -> mean 1/3; chosen > rejected in pairs 1 and 3 -> accuracy 2/3
    out = dpo_loss(torch.tensor(POLICY_CHOSEN + [-1.0]), torch.tensor(POLICY_REJECTED + [-3.0]),
                   torch.tensor(REF_CHOSEN + [-2.0]), torch.tensor(REF_REJECTED + [-2.0]), beta=0.5)
    metrics = dpo_metrics(out)
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert metrics["rewards/chosen"] == pytest.approx(0.25)
    assert metrics["rewards/rejected"] == pytest.approx(-1 / 12)
    assert metrics["rewards/margins"] == pytest.approx(1 / 3)
    assert metrics["rewards/accuracies"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"loss_type": "kto"}, "unknown DPO loss_type 'kto'"),
    ({"label_smoothing": -0.1}, r"label_smoothing must lie in \[0, 0.5\)"),
    ({"label_smoothing": 0.5, "loss_type": "robust"}, r"label_smoothing must lie in \[0, 0.5\)"),
    ({"label_smoothing": 0.1, "loss_type": "ipo"}, "has no effect on loss_type 'ipo'"),
    ({"label_smoothing": 0.1, "loss_type": "hinge"}, "has no effect on loss_type 'hinge'"),
    ({"beta": 0.0}, "beta must be positive"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dpo_loss(*_logps(), **kwargs)


def test_mismatched_shapes_raise():
    policy_chosen, policy_rejected, ref_chosen, _ = _logps()
    with pytest.raises(ValueError, match="same shape"):
        dpo_loss(policy_chosen, policy_rejected, ref_chosen, torch.zeros(3))


def test_chosen_nll_is_per_token():
    from tether.losses.dpo import chosen_nll

    # Two answers of 2 and 3 tokens with summed log-probs -1 and -4: NLL = 5 / 5 tokens = 1.
    nll = chosen_nll(torch.tensor([-1.0, -4.0]), torch.tensor([2, 3]))
    assert nll.item() == pytest.approx(1.0)
