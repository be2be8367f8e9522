"""The statistics of an RL step over every rank's rows (torchrun), in one process the plain ones.

Under torchrun each rank samples and scores a contiguous block of the step's prompts (whole
groups). What GRPO and PPO compute over the batch (advantages, reward mean and std, whitening, the
KL the adaptive controller reads, logged means) must be computed over the whole step, so that 2
processes train and log as 1 does. These helpers hide the gathering and the all-reduces.
"""

from __future__ import annotations

import math

import torch

from tether.engine import distributed
from tether.losses.kl import masked_mean
from tether.losses.ppo import explained_variance, whiten
from tether.rewards.base import _mean_std as mean_std


def pool_scores(totals: list[float], per_reward: dict, metrics: dict[str, float], lengths: torch.Tensor,
                truncated: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float], int]:
    """Every rank's rewards, completion lengths and reward metrics, in global row order.

    Group and batch statistics (advantages, reward mean/std) need every rank's groups. One
    process: as given. Shape: totals (rows,), lengths (rows,) -> rewards (P*N,), lengths (P*N,).
    """
    if not distributed.world().enabled:
        return torch.tensor(totals), lengths, metrics, truncated
    ranks = distributed.gather_objects((totals, per_reward, metrics, lengths.tolist(), truncated))
    pooled: dict[str, float] = {}
    for name in per_reward:
        applied = [v for _, per, _, _, _ in ranks for v in per[name] if v is not None]
        pooled[f"rewards/{name}/mean"], pooled[f"rewards/{name}/std"] = mean_std(applied)
        if f"rewards/{name}/failed" in metrics:
            pooled[f"rewards/{name}/failed"] = sum(m[f"rewards/{name}/failed"] for _, _, m, _, _ in ranks)
    all_totals = [t for rank_totals, *_ in ranks for t in rank_totals]
    pooled["rewards/total/mean"], pooled["rewards/total/std"] = mean_std(all_totals)
    all_lengths = torch.tensor([n for *_, rank_lengths, _ in ranks for n in rank_lengths])
    return torch.tensor(all_totals), all_lengths, pooled, sum(r[-1] for r in ranks)


def pooled_rows(*columns: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's per-completion values (scores, sequence KL, ...) in global row order.
    One process: as given. Shape: each (rows,) -> (P*N,), dtype kept."""
    if not distributed.world().enabled:
        return list(columns)
    ranks = distributed.gather_objects([column.tolist() for column in columns])
    return [torch.tensor([value for rank in ranks for value in rank[index]], dtype=column.dtype)
            for index, column in enumerate(columns)]


def pooled_masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """``masked_mean(x, mask)`` over every rank's tokens. Shape: x, mask (rows, L)."""
    if not distributed.world().enabled:
        return masked_mean(x, mask).item()
    total = distributed.all_reduce_sum(float(torch.where(mask, x, 0.0).sum()))
    return total / max(distributed.all_reduce_sum(int(mask.sum())), 1)


def pooled_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, int]:
    """Mean and (biased) variance of ``x`` over every rank's masked entries, and how many there are:
    sums all-reduced in float64, the variance around the pooled mean (two passes, no cancellation).
    Shape: x, mask (rows, L) -> scalars."""
    mask = mask.bool()
    count = distributed.all_reduce_sum(int(mask.sum()))
    zero = torch.zeros((), dtype=torch.float64)
    total = distributed.all_reduce_sum(float(torch.where(mask, x.double(), zero).sum()))
    mean = total / max(count, 1)
    squares = distributed.all_reduce_sum(float(torch.where(mask, (x.double() - mean) ** 2, zero).sum()))
    return mean, squares / max(count, 1), count


def pooled_whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
                  ) -> torch.Tensor:
    """``losses.ppo.whiten`` with the mean and unbiased variance of the whole step's tokens, every
    rank's, so 2 processes whiten as 1 does. One process: ``whiten`` itself. Shape: (rows, L)."""
    if not distributed.world().enabled:
        return whiten(x, mask, shift_mean=shift_mean, eps=eps)
    mean, variance, count = pooled_moments(x, mask)
    if count < 2:
        raise ValueError(f"unbiased variance needs at least 2 unmasked entries, got {count}")
    variance *= count / (count - 1)
    whitened = (x - mean) / math.sqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=x.dtype, device=x.device))


def pooled_explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``explained_variance`` over every rank's tokens (one process: the function itself)."""
    if not distributed.world().enabled:
        return explained_variance(values, returns, mask)
    returns_var = pooled_moments(returns, mask)[1]
    if returns_var == 0:
        return math.nan
    return 1 - pooled_moments(returns - values, mask)[1] / returns_var
