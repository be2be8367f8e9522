"""Bradley-Terry reward-model loss, and what its scores mean as probabilities.

A reward model r(x, y) gives one scalar per (prompt, response). Bradley and Terry (1952) model a
preference y_c > y_r as

    P(y_c > y_r | x) = sigma(r_c - r_r),        r_c = r(x, y_c),  r_r = r(x, y_r)

and the reward model maximises the log-likelihood of the observed preferences (Christiano et al.
2017; Ouyang et al. 2022, Eq. 1). Per pair, with an optional margin m (Llama 2, Touvron et al.
2023: a larger m for pairs the annotators rated "significantly better"):

    l_i = -log sigma(r_c,i - r_r,i - m_i)

The scores are only defined up to a constant (sigma sees differences), so the model can drift
to any offset. Centering (Eisenstein et al. 2023) adds a penalty that keeps them near zero:

    L = mean_i l_i + c * mean_i (r_c,i + r_r,i)^2        c = center_coefficient (TRL: 0.01)

Exactly TRL's ``RewardTrainer.compute_loss`` (trl 1.16, ``reward_trainer.py``); tests check the two
agree. Both terms are means over pairs, so micro-batches weighted by their pair counts add up to
the loss of the whole batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class BradleyTerryOutput(NamedTuple):
    """The objective and its parts. ``loss`` is a scalar; ``losses`` (B,) the per-pair terms."""

    loss: Tensor
    losses: Tensor  # (B,) -log sigma(r_c - r_r - m)
    centering: Tensor  # scalar, c * mean((r_c + r_r)^2); 0 without centering


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, *,
                       margin: Tensor | None = None,
                       center_coefficient: float | None = None) -> BradleyTerryOutput:
    """``L = mean(-log sigma(r_c - r_r - m)) + c * mean((r_c + r_r)^2)`` (module docstring).

    Shape:
        chosen_rewards, rejected_rewards: (B,) scalar rewards of each pair's two responses
        margin: (B,) or None (m = 0)
        output: loss (), losses (B,), centering ()
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.ndim != 1:
        raise ValueError(f"chosen and rejected rewards must both be (B,), got "
                         f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}")
    if margin is not None and margin.shape != chosen_rewards.shape:
        raise ValueError(f"margin must be (B,) like the rewards, got {tuple(margin.shape)}")
    logits = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        logits = logits - margin.to(logits.dtype)
    losses = -F.logsigmoid(logits)  # (B,)
    centering = torch.zeros((), dtype=losses.dtype, device=losses.device)
    if center_coefficient:
        centering = center_coefficient * ((chosen_rewards + rejected_rewards) ** 2).mean()
    return BradleyTerryOutput(losses.mean() + centering, losses, centering)


def bradley_terry_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, float]:
    """Batch diagnostics with TRL's names: ``accuracy`` = mean(r_c > r_r) (a tie counts as wrong),
    ``margin`` = mean(r_c - r_r), and the mean/min/max reward over both responses.

    Shape: chosen_rewards, rejected_rewards: (B,).
    """
    chosen, rejected = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    both = torch.cat([chosen, rejected])  # (2B,)
    return {
        "accuracy": (chosen > rejected).float().mean().item(),
        "margin": (chosen - rejected).mean().item(),
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "mean_reward": both.mean().item(),
        "min_reward": both.min().item(),
        "max_reward": both.max().item(),
    }


def preference_calibration(margins: Tensor, num_bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error of ``p = sigma(r_c - r_r)`` read as P(chosen preferred).

    Every held-out pair is seen in both orders: (p, label 1) as given and (1 - p, label 0)
    swapped, so a model that is right 70% of the time when it says 0.7 is calibrated, whatever
    order the data lists the pair in. (With the given order alone every label is 1 and ECE would
    just reward overconfidence.) With ``num_bins`` equal bins of [0, 1]:

        ECE = sum_b (n_b / 2N) * |mean(p in b) - mean(label in b)|

    which equals the usual confidence ECE over max(p, 1 - p). Returns the ECE and the reliability
    table, one row per non-empty bin with p >= 0.5 (the other half mirrors it): the pairs whose
    favoured response has that confidence, their mean confidence and the share of them right.

    Shape: margins: (N,) r_c - r_r of each held-out pair.
    """
    if margins.numel() == 0:
        raise ValueError("no pairs to measure calibration on")
    p = torch.sigmoid(margins.detach().double().flatten())  # (N,)
    probs = torch.cat([p, 1 - p])  # (2N,)
    labels = torch.cat([torch.ones_like(p), torch.zeros_like(p)])  # (2N,)
    bins = torch.clamp((probs * num_bins).long(), max=num_bins - 1)  # (2N,) p = 1 goes in the top bin
    ece, table = 0.0, []
    for b in range(num_bins):
        inside = bins == b
        count = int(inside.sum())
        if count == 0:
            continue
        confidence, frequency = probs[inside].mean().item(), labels[inside].mean().item()
        ece += count / len(probs) * abs(confidence - frequency)
        if (b + 0.5) / num_bins >= 0.5:
            # Here every entry is a pair whose favoured response (p >= 0.5) has this confidence.
            table.append({"bin": [b / num_bins, (b + 1) / num_bins], "pairs": count,
                          "confidence": confidence, "accuracy": frequency})
    return ece, table
