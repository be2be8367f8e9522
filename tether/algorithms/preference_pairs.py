"""Preference pairs as the policy reads them: tokenized pairs, their packed batches, and the
one function that scores them (``score_pairs``): the summed or averaged log-probability of each
pair's chosen and rejected answer under a model.

DPO's reference log-probs and held-out loss, the safety demo's preference accuracy and the data
audit's implicit reward margins all score pairs with ``score_pairs``. The reward model scores
pairs with its value head instead (``algorithms/reward.py:evaluate_comparisons``): a scalar per
answer read at its last token, from a different model class and batch layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.engine import distributed, progress_bar
from tether.losses.logprobs import packed_prompt_token_logps
from tether.models import evaluation_mode


@dataclass
class PreferenceExamples:
    """Tokenized pairs plus their reference log-probs, filled in once by ``compute_reference``."""

    encoded: list[dict]
    ref_chosen: torch.Tensor | None = None  # (N,)
    ref_rejected: torch.Tensor | None = None  # (N,)

    def __len__(self) -> int:
        return len(self.encoded)


def collate_pairs(examples: PreferenceExamples, indices: list[int], pad_id: int) -> dict:
    """Each pair's prompt once (left-padded), then its chosen and rejected answers (right-padded):
    the model reads each pair as one row, prompt then both answers (``packed_prompt_token_logps``).

    Shape: prompt_ids, prompt_mask (B, S); completion_ids, completion_mask (2B, L), chosen rows
    first; ref_* (B,).
    """
    pairs = [examples.encoded[i] for i in indices]
    prompts = [p["prompt_ids"] for p in pairs]
    answers = [p[side] for side in ("chosen_ids", "rejected_ids") for p in pairs]
    width, length = max(map(len, prompts)), max(map(len, answers))
    batch = {
        "prompt_ids": torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts]),
        "prompt_mask": torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts]),
        "completion_ids": torch.tensor([ids + [pad_id] * (length - len(ids)) for ids in answers]),
        "completion_mask": torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in answers]),
        "num_items": len(indices),
    }
    if examples.ref_chosen is not None:
        batch["ref_chosen"] = examples.ref_chosen[indices]
        batch["ref_rejected"] = examples.ref_rejected[indices]
    return batch


def pair_logps(model, batch: dict, *, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y | x) of the chosen and of the rejected answers (summed over tokens, or averaged).
    Shape: (B,), (B,)."""
    half = batch["num_items"]
    prompt_of_row = torch.arange(half, device=batch["prompt_ids"].device).repeat(2)  # (2B,)
    token_logps = packed_prompt_token_logps(model, batch["prompt_ids"], batch["prompt_mask"], prompt_of_row,
                                            batch["completion_ids"], batch["completion_mask"])  # (2B, L)
    mask = batch["completion_mask"].to(token_logps.dtype)
    logps = (token_logps * mask).sum(1)  # (2B,)
    if average:
        logps = logps / mask.sum(1).clamp(min=1.0)
    return logps[:half], logps[half:]


@torch.no_grad()
def score_pairs(model, examples: PreferenceExamples, pad_id: int, batches: list[list[int]], *, average: bool,
                bf16: bool = False, label: str = "score pairs", progress: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_c | x) and log pi(y_r | x) of each pair (``pair_logps``), scored ``batches`` at a time
    in eval mode under bf16 autocast when asked. A pair in several batches keeps the value of the
    last one; a pair in none is NaN. Shape: (N,), (N,) float32 on the CPU."""
    chosen = torch.full((len(examples),), float("nan"))
    rejected = torch.full((len(examples),), float("nan"))
    device = next(model.parameters()).device
    with evaluation_mode(model), progress_bar(label, sum(map(len, batches)), enabled=progress) as bar:
        for indices in batches:
            batch = distributed.to_device(collate_pairs(examples, indices, pad_id), device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                chosen_logps, rejected_logps = pair_logps(model, batch, average=average)
            chosen[indices] = chosen_logps.float().cpu()
            rejected[indices] = rejected_logps.float().cpu()
            bar.advance(len(indices))
    return chosen, rejected


def evaluation_batches(count: int, size: int) -> list[list[int]]:
    """Pairs 0..count-1 in order, ``size`` at a time (held-out pairs are read this way)."""
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]
