"""Truncated importance sampling (TIS) of the sampling engine's mismatch, shared by GRPO and PPO.

When another engine (vLLM) samples the tokens, its log-probs mu differ from the trainer's pi_old
(other kernels, other rounding; in bf16 by up to ~0.4 nats a token), so the samples are slightly
off-policy. Each token's policy-gradient term is weighted by (Yao et al. 2025; TRL's
vllm_importance_sampling_correction, verl's rollout_is):

    rho_t = min( exp(old_logps_t - engine_logps_t), C )

C bounds the variance the correction adds. The weight carries no gradient: it multiplies the
token's surrogate loss (GRPO: before the KL term is added, as TRL does; PPO: the clipped surrogate,
not the value loss, as verl does).
"""

from __future__ import annotations

from torch import Tensor


def truncated_importance_weights(old_logps: Tensor, engine_logps: Tensor, cap: float | None) -> Tensor | None:
    """rho = min(exp(old_logps - engine_logps), cap) per token (module docstring), or None when
    ``cap`` is None (no correction). Padding positions get whatever; the loss masks them.

    Shape: old_logps, engine_logps (B, T) -> (B, T).
    """
    if cap is None:
        return None
    return (old_logps.detach() - engine_logps.detach()).exp().clamp(max=cap)
