"""Consistency training losses: answer the same with or without a wrapper around the prompt.

Bias-augmented consistency training (BCT; Chua et al. 2024) is supervised: the target for a wrapped
prompt w(x) is the model's own answer y*(x) to the clean prompt x, generated once from the frozen
starting weights,

    L_BCT = -(1/N) sum_t log pi_theta(y*_t | w(x), y*_<t)          (``tether.losses.sft.sft_loss``)

Activation consistency training (ACT) asks the residual stream to agree instead of the text: at
the last K prompt tokens (the chat template's generation prompt, the same tokens in both versions),
for each chosen layer l,

    L_ACT = (1/|L|) sum_l (1/(B K H)) sum_{b,k} || h_l(w(x))_{b,k} - sg(h_l(x)_{b,k}) ||^2

where sg is stop-gradient: the clean branch is a fixed target, so training moves only how the model
reads the wrapped prompt.

Both move the clean behaviour too (the weights are shared), so an optional anchor holds the clean
prompt x -> clean answer y* in place. ``sft`` trains it like BCT's targets (L_BCT on x instead of
w(x)); ``kl`` penalises moving away from the starting model pi_ref on those tokens, with the per-token
log-ratio log r_t = log pi_ref(y*_t | x, y*_<t) - log pi_theta(y*_t | x, y*_<t) (reference computed
once, before training) and the k3 form of ``tether.losses.kl``:

    L_anchor_kl = (1/N) sum_t [ (r_t - 1) - log r_t ]        over the N answer tokens of the batch

It is 0 at the start and >= 0 per token, rising whichever way a token's probability moves (fast
when it falls). y* is the starting model's greedy answer, not a sample of pi_theta, so this is a
divergence penalty on the clean answer's tokens rather than an unbiased estimate of KL(pi_theta || pi_ref).
"""

from __future__ import annotations

import torch

from tether.losses.kl import kl_estimate, masked_mean


def activation_consistency_loss(wrapped: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between wrapped and (detached) clean activations.

    Shape: wrapped, clean (layers, B, K, H) -> scalar. Only ``wrapped`` receives gradients.
    """
    if wrapped.shape != clean.shape:
        raise ValueError(f"wrapped {tuple(wrapped.shape)} and clean {tuple(clean.shape)} activations differ in shape")
    return (wrapped.float() - clean.detach().float()).square().mean()


def anchor_kl_loss(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean k3 divergence of the policy from the (fixed) reference on the masked answer tokens.

    Shape: logps, ref_logps, mask (B, T) -> scalar. Only ``logps`` receives gradients.
    """
    return masked_mean(kl_estimate(logps.float(), ref_logps.detach().float(), "k3"), mask)
