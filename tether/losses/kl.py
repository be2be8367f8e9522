"""Per-token KL estimators between the policy and a reference, from the sampled tokens' log-probs alone.

Schulman, "Approximating KL Divergence" (2020, http://joschu.net/blog/kl-approx.html). Tokens y are
sampled from the policy pi; with the log-ratio

    log r = log pi_ref(y) - log pi(y)          (ref_logps - logps)

each estimator below has expectation KL(pi || pi_ref) under y ~ pi (k2 only approximately):

    k1 = -log r                 = logps - ref_logps           unbiased, high variance, can be negative
    k2 = 1/2 (log r)^2                                        biased (low), low variance, >= 0
    k3 = (r - 1) - log r        = expm1(log r) - log r        unbiased, low variance, >= 0

k3 is the estimator GRPO adds to its loss (DeepSeekMath, Eq. 4). Written as exp(log r) - log r - 1 it
cancels catastrophically near r = 1, where a policy starts and usually stays: in float64, log r = 1e-8
gives -1.1e-16 (a negative KL) instead of 5e-17; in float32, log r = 1e-4 gives 0 instead of 5e-9.
``torch.expm1`` keeps the small difference, so k3 stays accurate and non-negative.
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logps: Tensor, ref_logps: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    Shape:
        logps, ref_logps: any shape, the same for both (usually (B, T))
        output: same shape as the inputs
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_ESTIMATORS)}")
    if logps.shape != ref_logps.shape:
        raise ValueError(f"logps and ref_logps must have the same shape, got {tuple(logps.shape)} "
                         f"and {tuple(ref_logps.shape)}")
    log_ratio = ref_logps - logps  # log r
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    return torch.expm1(log_ratio) - log_ratio


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is set (nonzero), over ``dim`` or over everything.

    Masked-out entries are ignored even when they hold inf or NaN (padding often does). A row with no
    valid entry gives 0, not NaN, so it adds nothing to a loss: this is TRL's ``clamp(min=1)`` rule.

    Shape:
        x: broadcastable to mask's shape, e.g. (B, T) or (B, 1)
        mask: (B, T), bool or 0/1
        output: scalar if dim is None, else mask's shape with ``dim`` removed
    """
    mask = mask.bool()
    total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    count = mask.sum(dim) if dim is not None else mask.sum()
    if dim is None:
        return total.sum() / count.clamp(min=1)
    return total.sum(dim) / count.clamp(min=1)
