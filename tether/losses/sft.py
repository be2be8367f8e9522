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
    shifted_logits = logits[:, :-1, :]  # (B, T-1, V)
    shifted_labels = labels[:, 1:]  # (B, T-1)
    num_tokens = int((shifted_labels != IGNORE_INDEX).sum())
    loss_sum = F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.size(-1)).float(),
                               shifted_labels.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction="sum")
    return loss_sum / max(num_tokens, 1), num_tokens
