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
"""

from __future__ import annotations

import torch


def activation_consistency_loss(wrapped: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between wrapped and (detached) clean activations.

    Shape: wrapped, clean (layers, B, K, H) -> scalar. Only ``wrapped`` receives gradients.
    """
    if wrapped.shape != clean.shape:
        raise ValueError(f"wrapped {tuple(wrapped.shape)} and clean {tuple(clean.shape)} activations differ in shape")
    return (wrapped.float() - clean.detach().float()).square().mean()
