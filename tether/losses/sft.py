"""Supervised fine-tuning loss: next-token cross-entropy on completion tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood of the labelled tokens.

        L = -(1/N) * sum_{t : labels_t != -100} log p_theta(labels_t | tokens_<t)

    where N is the number of labelled tokens. Position t of ``logits`` predicts token t+1, so
    logits and labels are shifted by one here (labels are aligned with ``input_ids``).

    Shape:
        logits: (B, T, V), labels: (B, T) with -100 on prompt and padding tokens.
    Returns:
        (loss, N). The loss is 0 with no gradient path broken when N == 0.
    """
    return next_token_loss(logits[:, :-1, :], labels[:, 1:])  # position t predicts token t+1


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose logits the loss reads: t where some row labels token t+1.

    Pass them as ``logits_to_keep`` and the lm_head (and the (B, T, V) logits) skips the prompts;
    then ``next_token_loss(logits, labels[:, positions + 1])`` is ``sft_loss`` of the full logits.

    Shape: labels (B, T) -> (K,) increasing positions in [0, T-1)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of ``targets`` (-100: ignored) under ``logits``, already aligned.

    Shape: logits (B, K, V), targets (B, K). Returns (loss, N labelled targets)."""
    num_tokens = int((targets != IGNORE_INDEX).sum())
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum / max(num_tokens, 1), num_tokens
