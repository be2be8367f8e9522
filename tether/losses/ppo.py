"""PPO for language models (RLHF), as pure functions of per-token rewards, values and log-probs.

The setting is Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences") and
Ouyang et al. 2022 (InstructGPT): an episode is one completion y = (y_1 .. y_T) of a prompt x, the
action at step t is token y_t, and the only environment reward is a scalar score s(x, y) from a
reward model at the end. A per-token KL penalty keeps the policy pi near the reference pi_ref:

    KL_t = log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)        k1 (TRL's default), or k3
    r_t  = -kl_coef * KL_t  +  [t = T] * s(x, y)                    score at the last real token

Advantages by generalized advantage estimation (Schulman et al. 2016, "GAE", Eq. 16), with the
value V_t = V(x, y_<t) predicted before token t is emitted and V_{T+1} = 0 (the episode ends):

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * A_{t+1}       = sum_{l>=0} (gamma lam)^l delta_{t+l}
    R_t     = A_t + V_t                             the value target ("returns")

Then the clipped surrogate of PPO (Schulman et al. 2017, Eq. 7) and a clipped value loss, with the
importance ratio w_t = pi(y_t) / pi_old(y_t) against the policy that sampled the batch:

    L_pg = mean_t max(-A_t w_t, -A_t clip(w_t, 1 - epsilon, 1 + epsilon))
    L_vf = 1/2 mean_t max((V'_t - R_t)^2, (clip(V'_t, V_t - c, V_t + c) - R_t)^2)    c = cliprange_value
    L    = L_pg + vf_coef * L_vf

When a vLLM engine sampled the batch, each token's L_pg term can be weighted by the truncated
importance weight rho_t = min(exp(log pi_old - log mu_engine), C) (tether/losses/importance.py).

Means run over real (unpadded) completion tokens. Sequences are right-padded: a mask (B, T) marks
real tokens, and every function treats what lies beyond a row's mask as absent.

TRL (trl/experimental/ppo/ppo_trainer.py, v1.10) uses these formulas with two layout quirks we do not
copy: it adds the score one position *after* the last real token (on the first padding position, whose
value it keeps in the value loss), and its ``approxkl`` metric averages over padding too. Both are
documented at the functions below; tests/test_ppo_loss.py replays TRL's code line by line.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tether.losses.kl import kl_estimate, masked_mean

# ------------------------------------------------------------------------------------------ statistics

def masked_var(x: Tensor, mask: Tensor, *, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the entries where ``mask`` is set (TRL's ``masked_var``).

    unbiased: multiply by n / (n - 1) (Bessel), as TRL does; needs at least two masked entries.

    Shape: x, mask: (B, T) -> scalar
    """
    mask = mask.bool()
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count < 2:
            raise ValueError(f"unbiased variance needs at least 2 unmasked entries, got {int(count)}")
        variance = variance * count / (count - 1)
    return variance


def whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries; 0 on the others.

    ``shift_mean=False`` adds the mean back, so only the scale changes: TRL whitens rewards that way
    (``whiten_rewards``), which keeps their sign, and advantages with the mean removed. var is the
    unbiased masked variance (TRL's ``masked_whiten``).

    Shape: x, mask: (B, T) -> (B, T)
    """
    mask = mask.bool()
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros((), dtype=x.dtype, device=x.device))


# ---------------------------------------------------------------------------------- rewards and GAE

def last_token_index(mask: Tensor) -> Tensor:
    """Column of each row's last real token (-1 for a row without any). Shape: (B, T) -> (B,)."""
    mask = mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1)


def token_rewards(scores: Tensor, logps: Tensor, ref_logps: Tensor | None, mask: Tensor, *,
                  kl_coef: float, kl_estimator: str = "k1") -> tuple[Tensor, Tensor]:
    """Per-token rewards r_t = -kl_coef * KL_t, with the score added at the last real token.

    KL_t is ``kl_estimate(logps, ref_logps, kl_estimator)`` (k1 = logps - ref_logps by default, TRL's
    choice; k3 is never negative). Without ``ref_logps`` (kl_coef = 0, no reference model) KL_t = 0.
    Rows with no real token get no reward at all. Returns ``(rewards, kl)``, both 0 on padding.

    Shape:
        scores: (B,); logps, ref_logps, mask: (B, T)
        output: rewards (B, T), kl (B, T)
    """
    mask = mask.bool()
    if ref_logps is None:
        if kl_coef != 0:
            raise ValueError(f"kl_coef={kl_coef} needs ref_logps (the reference policy's log-probs)")
        kl = torch.zeros_like(logps)
    else:
        kl = torch.where(mask, kl_estimate(logps, ref_logps, kl_estimator), torch.zeros_like(logps))
    rewards = -kl_coef * kl  # (B, T)
    last = last_token_index(mask)  # (B,)
    rows = (last >= 0).nonzero().squeeze(1)
    rewards = rewards.index_put((rows, last[rows]), scores[rows].to(rewards.dtype), accumulate=True)
    return rewards, kl


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimates and returns (module docstring), right padding masked out.

    Beyond a row's last real token the episode is over: rewards and values there count as 0, so
    V_{T+1} = 0 and no padding leaks into A_t. Returns ``(advantages, returns)``, 0 on padding.

    Shape: rewards, values, mask: (B, T) -> advantages (B, T), returns (B, T)
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    rewards = torch.where(mask, rewards, zero)
    values = torch.where(mask, values, zero)
    length = rewards.shape[1]
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else zero
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
    returns = advantages + values
    return torch.where(mask, advantages, zero), torch.where(mask, returns, zero)


# -------------------------------------------------------------------------------------------- losses

def policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *,
                epsilon: float = 0.2, token_weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate L_pg (module docstring), a masked token mean, and its diagnostics.

    ``token_weights`` (B, T), no gradient: truncated importance weights rho_t of the sampling engine
    (tether/losses/importance.py); each token's clipped term becomes rho_t max(-A_t w_t, -A_t clip(w_t)).

    Metrics (detached): ``clipfrac``, the fraction of tokens where the clipped term is the larger loss
    (its gradient is zero there, TRL's ``pg_clipfrac``); ``ratio`` the mean w_t; with token weights,
    ``importance_weight/mean`` their mean.

    Shape: logps, old_logps, advantages, mask: (B, T) -> (scalar, metrics)
    """
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must lie in (0, 1), got {epsilon}")
    ratio = torch.exp(logps - old_logps.detach())  # (B, T)
    advantages = advantages.detach()
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * ratio.clamp(1 - epsilon, 1 + epsilon)
    per_token = torch.max(pg_loss1, pg_loss2)  # (B, T)
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        metrics = {"clipfrac": masked_mean((pg_loss2 > pg_loss1).float(), mask),
                   "ratio": masked_mean(ratio, mask)}
        if token_weights is not None:
            metrics["importance_weight/mean"] = masked_mean(token_weights.float(), mask)
    return loss, metrics


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *,
               cliprange_value: float | None = 0.2) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss L_vf = 1/2 mean_t max((V' - R)^2, (clip(V', V - c, V + c) - R)^2).

    V' = ``values`` (the critic now), V = ``old_values`` (the critic at rollout time), R = ``returns``.
    Taking the max makes clipping pessimistic: a step that moves V' past V +- c toward R gets no
    gradient, one that moves it away is still penalised. ``cliprange_value=None`` is the plain
    1/2 (V' - R)^2. Metric ``vf_clipfrac``: share of tokens where the clipped error is the larger.

    Shape: values, old_values, returns, mask: (B, T) -> (scalar, metrics)
    """
    returns, old_values = returns.detach(), old_values.detach()
    vf_loss1 = (values - returns) ** 2
    if cliprange_value is None:
        loss = 0.5 * masked_mean(vf_loss1, mask)
        return loss, {"vf_clipfrac": torch.zeros((), device=values.device)}
    clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    vf_loss2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_loss1, vf_loss2), mask)
    with torch.no_grad():
        metrics = {"vf_clipfrac": masked_mean((vf_loss2 > vf_loss1).float(), mask)}
    return loss, metrics


def approx_kl(logps: Tensor, old_logps: Tensor, mask: Tensor, kind: str = "k3") -> Tensor:
    """Estimate of KL(pi_old || pi) from the batch's tokens (sampled from pi_old), for early stopping.

    With log w = logps - old_logps: k3 = (w - 1) - log w (cleanRL's ``approx_kl``, never negative),
    k2 = 1/2 (log w)^2 (TRL's ``approxkl``; TRL averages over padding as well, we do not).

    Shape: logps, old_logps, mask: (B, T) -> scalar (detached)
    """
    with torch.no_grad():
        # kl_estimate(p, q) estimates KL(p-sampler || q) with log r = q - p: here log r = log w.
        return masked_mean(kl_estimate(old_logps, logps, kind), mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[R - V] / Var[R] over real tokens: 1 is a perfect critic, 0 no better than a constant,
    negative worse (cleanRL's diagnostic). NaN when the returns do not vary."""
    mask = mask.bool()
    returns_var = masked_var(returns, mask, unbiased=False)
    if returns_var == 0:
        return math.nan
    return float(1 - masked_var(returns - values, mask, unbiased=False) / returns_var)


# ------------------------------------------------------------------------------------- KL controllers

class FixedKLController:
    """kl_coef stays at its initial value."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Ziegler et al. 2019, section 2.2: steer the measured KL toward ``target``.

        e_t      = clip(KL_t / target - 1, -0.2, 0.2)
        beta_t+1 = beta_t * (1 + K_beta * e_t),     K_beta = n_steps / horizon

    ``current_kl`` is the mean per-sequence KL (summed over tokens) of the last batch, ``n_steps`` the
    number of sequences in it; ``horizon`` is how many sequences it takes to move beta by the full
    proportional error. The same rule and arguments as TRL's old ``AdaptiveKLController``.
    """

    def __init__(self, kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got {target} and {horizon}")
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
        return self.value
