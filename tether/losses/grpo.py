"""Group-relative policy optimization (GRPO) and its variants, as pure functions of per-token log-probs.

Each prompt gets G sampled completions, laid out consecutively: rewards (B,) with B = num_prompts * G.

Advantages (one per completion, shared by all its tokens):

    grpo     (Shao et al. 2024, DeepSeekMath):  A_i = (r_i - mean_g r) / (std_g r + eps)
    batch    (Liu et al. 2025, "Lite PPO"):     A_i = (r_i - mean_g r) / (std_batch r + eps)
    none     (Liu et al. 2025, Dr. GRPO):       A_i =  r_i - mean_g r
    rloo     (Ahmadian et al. 2024):            A_i =  r_i - 1/(G-1) sum_{j != i, j in g} r_j

where mean_g, std_g run over the G completions of i's prompt. As in TRL, std is Bessel-corrected
(divides by n - 1) and eps = 1e-4. A NaN reward marks an unscorable completion: it is left out of
its group's statistics and gets advantage 0.

Policy loss, per token t of completion i, with importance ratio w against the sampling policy:

    w_it  = pi(y_it) / pi_old(y_it) = exp(logps - old_logps)                   token level
    w_i   = exp( 1/|y_i| sum_t (logps - old_logps) )                           gspo (Zheng et al. 2025)
    l_it  = -min(w A_i, clip(w, 1 - epsilon_low, 1 + epsilon_high) A_i)  +  beta * KL_it
    KL_it = w * k3(logps, ref_logps)      (k3 as in tether.losses.kl; the factor w is TRL's
                                           use_bias_correction_kl, DeepSeek-V3.2; set kl_bias_correction=False
                                           for the plain k3 of DeepSeekMath Eq. 4)

Aggregation over the mask m (the loss_type names and rules are TRL's, trainer/grpo_trainer.py):

    grpo, gspo : L = 1/B sum_i [ sum_t m_it l_it / sum_t m_it ]     mean over tokens, then sequences
    bnpo       : L = sum_it m l / sum_it m                          token mean over this batch
    dapo       : L = sum_it m l / num_tokens                        token mean over the whole generation
                                                                    batch (Yu et al. 2025, DAPO)
    dr_grpo    : L = sum_it m l / (B * max_completion_length)       constant normalizer (Liu et al. 2025)

The "grpo" average weighs each completion equally, so a token of a short answer counts more than a
token of a long one; dapo/bnpo weigh tokens equally; dr_grpo removes the length term altogether.
DAPO's paper also raises the upper clip, epsilon_high = 0.28 ("clip-higher"); epsilon_high=None keeps
the clip symmetric, TRL's default. Gradient-accumulation scaling (TRL divides by the number of
micro-batches) is left to the training loop.

Truncated importance sampling of a vLLM engine's log-prob mismatch (tether/losses/importance.py, shared
with PPO): rho_it = min(exp(old_logps_it - engine_logps_it), C), passed to ``policy_loss`` as
``token_weights`` and applied before the KL term is added, as TRL does.

gspo is TRL's importance_sampling_level="sequence" with the "grpo" aggregation, the setup of the GSPO
paper, which clips far tighter (epsilon_low = 3e-4, epsilon_high = 4e-4). Its gradient flows through the
one sequence ratio to every token; the paper's GSPO-token variant (per-token advantages through a
stop-gradient on the sequence ratio) is not implemented here, nor in TRL.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tether.losses.kl import kl_estimate, masked_mean

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "gspo")
ADVANTAGE_SCALES = ("group", "batch", "none")


# ---------------------------------------------------------------------------------------------- advantages

def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) rewards as (num_prompts, group_size), after checking the layout."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}: B must be "
                         "num_prompts * group_size, with each prompt's completions consecutive")
    if not rewards.is_floating_point():  # 0/1 correctness rewards often arrive as ints
        rewards = rewards.to(torch.get_default_dtype())
    return rewards.view(-1, group_size)


def _nanstd(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Bessel-corrected std ignoring NaNs; NaN where fewer than two values are present (TRL's nanstd)."""
    present = ~torch.isnan(x)
    count = present.sum(dim, keepdim=True) if dim is not None else present.sum()
    mean = torch.nanmean(x, dim, keepdim=True) if dim is not None else torch.nanmean(x)
    squares = torch.where(present, (x - mean) ** 2, torch.zeros_like(x))
    total = squares.sum(dim, keepdim=True) if dim is not None else squares.sum()
    std = torch.sqrt(total / (count - 1))
    std = torch.where(count > 1, std, torch.full_like(std, float("nan")))
    return std if keepdim or dim is None else std.squeeze(dim)


def group_advantages(rewards: Tensor, group_size: int, *, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """GRPO advantages: reward minus its group's mean, divided by a std chosen by ``scale``.

    ``scale="group"`` divides by each group's std (GRPO), ``"batch"`` by the std of all rewards,
    ``"none"`` not at all (Dr. GRPO). The mean is always the group's. Matches TRL's ``scale_rewards``.

    Shape:
        rewards: (B,), B = num_prompts * group_size, each prompt's completions consecutive
        output: (B,)
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; choose one of {', '.join(ADVANTAGE_SCALES)}")
    grouped = _grouped(rewards, group_size)  # (num_prompts, G)
    advantages = grouped - torch.nanmean(grouped, dim=1, keepdim=True)  # (num_prompts, G)
    if scale == "group":
        advantages = advantages / (_nanstd(grouped, dim=1, keepdim=True) + eps)
    elif scale == "batch":
        advantages = advantages / (_nanstd(grouped.view(-1)) + eps)
    # One-completion groups or batches have no std (NaN): their advantage, r - mean = 0, stays 0.
    return torch.nan_to_num(advantages.view(-1), nan=0.0)


def rloo_advantages(rewards: Tensor, group_size: int, *, normalize: bool = False, eps: float = 1e-4) -> Tensor:
    """REINFORCE leave-one-out advantages: A_i = r_i - mean of the other rewards of i's group.

    Unlike GRPO's group mean, the baseline excludes r_i, so it is independent of the sample it scores
    and the gradient estimate stays unbiased. ``normalize=True`` then z-scores the advantages over the
    whole batch, (A - mean A) / (std A + eps): TRL's RLOO ``normalize_advantages`` (off by default there too).

    Shape:
        rewards: (B,), B = num_prompts * group_size, each prompt's completions consecutive
        output: (B,)
    """
    grouped = _grouped(rewards, group_size)  # (num_prompts, G)
    if group_size < 2:
        raise ValueError("rloo_advantages needs group_size >= 2: the leave-one-out baseline averages the "
                         "other completions of the same prompt")
    present = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)  # (num_prompts, 1) scorable completions
    baselines = (torch.nansum(grouped, dim=1, keepdim=True) - grouped) / (present - 1)  # (num_prompts, G)
    advantages = (grouped - baselines).view(-1)  # (B,)
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (_nanstd(advantages) + eps)
    return torch.nan_to_num(advantages, nan=0.0)


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Which prompts' completions all got the same reward, and so teach the policy nothing.

    Their group-relative advantages are all 0. DAPO's dynamic sampling drops them and samples more
    prompts; their fraction is TRL's ``frac_reward_zero_std`` diagnostic (a rising value means the
    task is getting too easy or too hard). "Same" is TRL's test, std ~ 0 (``torch.isclose``, atol 1e-8).
    A group with fewer than two scorable (non-NaN) rewards counts as zero-variance too.
    Keep the other completions with ``rewards[~zero_variance_groups(rewards, G).repeat_interleave(G)]``.

    Shape:
        rewards: (B,), B = num_prompts * group_size
        output: (num_prompts,) bool
    """
    std = _nanstd(_grouped(rewards, group_size), dim=1)  # (num_prompts,), NaN if < 2 rewards present
    return torch.isclose(std, torch.zeros_like(std)) | torch.isnan(std)


def overlong_penalty(lengths: Tensor, max_completion_length: int, buffer_length: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), added to the task reward.

    With L_max = max_completion_length and L_buf = buffer_length:

        R(L) = 0                              if L <= L_max - L_buf
             = (L_max - L_buf - L) / L_buf    if L_max - L_buf < L <= L_max    (falls linearly from 0 to -1)
             = -1                             if L > L_max

    buffer_length = 0 leaves only the first and last cases, a hard -1 past L_max (as TRL's
    ``get_soft_overlong_punishment`` with ``soft_punish_cache=0``).

    Shape:
        lengths: (B,) completion lengths in tokens
        output: (B,) float
    """
    if max_completion_length < 1:
        raise ValueError(f"max_completion_length must be positive, got {max_completion_length}")
    if not 0 <= buffer_length <= max_completion_length:
        raise ValueError(f"buffer_length must lie in [0, max_completion_length={max_completion_length}], "
                         f"got {buffer_length}")
    if not lengths.is_floating_point():
        lengths = lengths.to(torch.get_default_dtype())
    if buffer_length == 0:
        return torch.where(lengths > max_completion_length, -1.0, 0.0).to(lengths.dtype)
    start = max_completion_length - buffer_length  # the penalty begins past this length
    # The ramp reaches -1 exactly at L_max, so clamping it also gives the -1 beyond.
    return ((start - lengths) / buffer_length).clamp(min=-1.0, max=0.0)  # (B,)


# --------------------------------------------------------------------------------------------- policy loss

def _check_policy_loss_args(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor,
                            ref_logps: Tensor | None, loss_type: str, epsilon_low: float, epsilon_high: float,
                            beta: float, max_completion_length: int | None, num_tokens: int | Tensor | None) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    if logps.dim() != 2:
        raise ValueError(f"logps must be per-token, shape (B, T), got {tuple(logps.shape)}")
    for name, tensor in (("old_logps", old_logps), ("mask", mask), ("ref_logps", ref_logps)):
        if tensor is not None and tensor.shape != logps.shape:
            raise ValueError(f"{name} must have the shape of logps {tuple(logps.shape)}, got {tuple(tensor.shape)}")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be one per sequence, shape ({logps.shape[0]},), "
                         f"got {tuple(advantages.shape)}")
    if not 0 <= epsilon_low < 1:
        raise ValueError(f"epsilon_low must lie in [0, 1), got {epsilon_low}: the ratio is clipped below at "
                         "1 - epsilon_low, which must stay positive")
    if epsilon_high < 0:
        raise ValueError(f"epsilon_high must be non-negative, got {epsilon_high}")
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    if beta > 0 and ref_logps is None:
        raise ValueError(f"beta={beta} adds a KL penalty to the reference model, so ref_logps are needed; "
                         "pass them, or set beta=0 to train without a reference model")
    if loss_type == "dr_grpo" and (max_completion_length is None or max_completion_length < 1):
        raise ValueError("loss_type 'dr_grpo' divides by B * max_completion_length, so max_completion_length "
                         f"(the generation limit, a positive int) is needed, got {max_completion_length!r}")
    if num_tokens is not None and loss_type != "dapo":
        raise ValueError(f"num_tokens sets the normalizer of loss_type 'dapo' only; it has no effect on "
                         f"{loss_type!r}")


def policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, loss_type: str,
                epsilon_low: float = 0.2, epsilon_high: float | None = None, ref_logps: Tensor | None = None,
                beta: float = 0.0, max_completion_length: int | None = None, num_tokens: int | Tensor | None = None,
                kl_bias_correction: bool = True, token_weights: Tensor | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped GRPO-family policy loss (formulas in the module docstring) and its diagnostics.

    ``old_logps`` are the log-probs under the policy that sampled the tokens; on the first update
    after sampling pass ``logps.detach()``, so w = 1 in value but not in gradient. ``ref_logps`` are
    only read when beta > 0 or for the ``kl`` metric, so beta = 0 needs no reference model.
    ``max_completion_length`` is read by dr_grpo only. ``num_tokens`` (dapo only) is the number of
    completion tokens in the whole generation batch, over all micro-batches and ranks; it defaults to
    this batch's ``mask.sum()``. Passing it makes the micro-batch losses add up to one token mean.
    ``token_weights`` (B, T), no gradient: truncated importance weights of the sampling engine
    (``truncated_importance_weights``), multiplying each token's policy-gradient term.

    Metrics (TRL's names), detached 0-d tensors so that no device sync happens here:
        clip_ratio/low_mean     fraction with w < 1 - epsilon_low and A < 0 (the clip removed the gradient)
        clip_ratio/high_mean    fraction with w > 1 + epsilon_high and A > 0
        clip_ratio/region_mean  either of the two
        ratio/mean              mean importance ratio w
        kl                      mean of KL_it, the per-token KL term above, when ref_logps are given
    Fractions are over completion tokens, or over sequences for gspo (one ratio per sequence).

    Shape:
        logps, old_logps, mask, ref_logps: (B, T), per completion token; mask bool or 0/1
        advantages: (B,)
        output: (scalar loss, dict of scalar metrics)
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    _check_policy_loss_args(logps, old_logps, advantages, mask, ref_logps, loss_type, epsilon_low, epsilon_high,
                            beta, max_completion_length, num_tokens)
    mask = mask.bool()
    # The sampling and reference policies are constants of the objective: no gradient reaches them.
    old_logps = old_logps.detach()
    ref_logps = ref_logps.detach() if ref_logps is not None else None

    log_ratio = logps - old_logps  # (B, T)
    if loss_type == "gspo":
        log_ratio = masked_mean(log_ratio, mask, dim=-1).unsqueeze(-1)  # (B, 1), length-normalized
    ratio = torch.exp(log_ratio)  # (B, T) or (B, 1) for gspo
    clipped_ratio = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    advantages = advantages.unsqueeze(-1)  # (B, 1)
    pg_loss1 = ratio * advantages
    pg_loss2 = clipped_ratio * advantages
    per_token_loss = -torch.min(pg_loss1, pg_loss2)  # (B, T) or (B, 1)
    if token_weights is not None:
        per_token_loss = per_token_loss * token_weights.detach()  # (B, T)

    per_token_kl = None
    if ref_logps is not None:  # with beta = 0, for the kl metric only
        per_token_kl = kl_estimate(logps, ref_logps, "k3")  # (B, T)
        if kl_bias_correction:
            # Samples come from pi_old, not pi: weighting by w makes the KL gradient the unbiased
            # gradient of KL(pi || pi_ref) (DeepSeek-V3.2). w is not detached; its gradient is the point.
            per_token_kl = per_token_kl * ratio
    if beta > 0:
        per_token_loss = per_token_loss + beta * per_token_kl  # (B, T)

    if loss_type in ("grpo", "gspo"):
        loss = masked_mean(per_token_loss, mask, dim=-1).mean()
    elif loss_type == "bnpo":
        loss = masked_mean(per_token_loss, mask)
    elif loss_type == "dapo":
        normalizer = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, device=mask.device)
        loss = _masked_sum(per_token_loss, mask) / normalizer.clamp(min=1)
    else:  # dr_grpo
        loss = _masked_sum(per_token_loss, mask) / (logps.shape[0] * max_completion_length)

    with torch.no_grad():
        low_clipped = (ratio < 1 - epsilon_low) & (advantages < 0)
        high_clipped = (ratio > 1 + epsilon_high) & (advantages > 0)
        if loss_type == "gspo":  # one ratio per sequence: average over sequences, as TRL logs it
            ratio_mean = lambda x: x.float().mean()  # noqa: E731
        else:
            ratio_mean = lambda x: masked_mean(x.float(), mask)  # noqa: E731
        metrics = {
            "clip_ratio/low_mean": ratio_mean(low_clipped),
            "clip_ratio/high_mean": ratio_mean(high_clipped),
            "clip_ratio/region_mean": ratio_mean(low_clipped | high_clipped),
            "ratio/mean": ratio_mean(ratio),
        }
        if per_token_kl is not None:
            metrics["kl"] = masked_mean(per_token_kl, mask)
        if token_weights is not None:
            metrics["importance_weight/mean"] = masked_mean(token_weights.float(), mask)
    return loss, metrics


def _masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum of x where mask is set; padding positions add exactly 0. Shape: x broadcastable to mask (B, T)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()
