"""Direct Preference Optimization and its close variants, as pure functions of sequence log-probs.

Notation (per preference pair, y_c preferred over y_r for prompt x):

    rho_c = log pi_theta(y_c | x) - log pi_ref(y_c | x)        chosen log-ratio
    rho_r = log pi_theta(y_r | x) - log pi_ref(y_r | x)        rejected log-ratio
    h     = rho_c - rho_r                                       preference log-ratio
    eps   = label_smoothing,  sigma = logistic sigmoid

Losses (per pair; the caller averages over the batch):

    sigmoid  (Rafailov et al. 2023; eps > 0 is conservative DPO, cDPO, Mitchell 2023):
             L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
    robust   (Chowdhury et al. 2024, unbiased under label flips with rate eps):
             L = [ -(1 - eps) log sigma(beta h) + eps log sigma(-beta h) ] / (1 - 2 eps)
    ipo      (Azar et al. 2023, Eq. 17, beta plays tau):
             L = (h - 1 / (2 beta))^2
    hinge    (SLiC, Zhao et al. 2023):
             L = max(0, 1 - beta h)

IPO as TRL computes it uses length-averaged log-probs, (1/|y|) sum_t log p(y_t | ...), for all four
inputs. Get those by passing ``average=True`` to ``tether.losses.logprobs.completion_logps`` for both
policy and reference; with summed log-probs the squared loss grows with completion length.

The implicit rewards logged by DPO are beta * rho_c and beta * rho_r (TRL: ``rewards/chosen``,
``rewards/rejected``); they are returned detached, for logging only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")
_SMOOTHED_LOSS_TYPES = ("sigmoid", "robust")


class DPOOutput(NamedTuple):
    """Per-pair losses and implicit rewards. Shape: each (B,)."""

    losses: Tensor
    chosen_rewards: Tensor  # beta * rho_c, detached
    rejected_rewards: Tensor  # beta * rho_r, detached


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, reference_free: bool = False) -> DPOOutput:
    """Per-pair DPO-family loss (formulas in the module docstring); ``losses.mean()`` is the objective.

    ``reference_free=True`` takes log pi_ref = 0, so h = log pi(y_c) - log pi(y_r).
    ``label_smoothing`` (eps, in [0, 0.5)) applies to "sigmoid" and "robust" only.

    Shape:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: (B,)
        output: DPOOutput of three (B,) tensors
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}: it is the assumed "
                         "probability that a preference label is flipped")
    if label_smoothing and loss_type not in _SMOOTHED_LOSS_TYPES:
        raise ValueError(f"label_smoothing={label_smoothing} has no effect on loss_type {loss_type!r}; it applies "
                         f"to {' and '.join(_SMOOTHED_LOSS_TYPES)} only")
    shapes = {tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                       ref_rejected_logps)}
    if len(shapes) != 1:
        raise ValueError(f"the four log-prob tensors must have the same shape, got {sorted(shapes)}")

    if reference_free:
        ref_chosen_logps = torch.zeros_like(policy_chosen_logps)
        ref_rejected_logps = torch.zeros_like(policy_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,) rho_c
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,) rho_r
    logits = chosen_logratios - rejected_logratios  # (B,) h
    eps = label_smoothing

    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * logits) - eps * F.logsigmoid(-beta * logits)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * logits) + eps * F.logsigmoid(-beta * logits)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * logits)

    return DPOOutput(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def dpo_metrics(out: DPOOutput) -> dict[str, float]:
    """Batch means of the implicit rewards, with TRL's metric names.

    rewards/accuracies is the fraction of pairs where the chosen reward beats the rejected one.
    """
    chosen, rejected = out.chosen_rewards.float(), out.rejected_rewards.float()
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
    }


def chosen_nll(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Negative log-likelihood per chosen token, the SFT term of RPO (Pang et al. 2024):

        NLL = - sum_i log pi_theta(y_c,i | x_i) / sum_i |y_c,i|

    Added to the DPO loss with a weight alpha (``dpo.sft_weight``), it keeps the chosen answers
    likely, not just likelier than the rejected ones: plain DPO can lower both and still widen
    the margin, which leaves a model that prefers refusals on paper but does not write them.

    Shape:
        policy_chosen_logps: (B,) summed log-probs; chosen_lengths: (B,) token counts
        output: scalar
    """
    return -policy_chosen_logps.sum() / chosen_lengths.sum().clamp(min=1)
