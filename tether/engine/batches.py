"""A batch plan: which examples form every micro-batch of the run, fixed by the seed.

The plan for epoch ``e`` comes from ``make_epoch(seed + e)``, so the data position of a run is
just its optimizer step: a resumed run asks for step ``s`` and gets exactly the micro-batches an
uninterrupted run would have seen, with nothing to save but the step number.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


class BatchPlan:
    def __init__(self, make_epoch: Callable[[int], list[list[int]]], *, seed: int, grad_accum: int,
                 max_steps: int | None = None, epochs: float = 1.0):
        self.make_epoch = make_epoch
        self.seed = seed
        self.grad_accum = grad_accum
        self._micro_batches: list[list[int]] = []
        self._epochs_built = 0
        first_epoch = self._extend()
        if not first_epoch:
            raise ValueError("no batches: the dataset is empty")
        per_epoch = len(first_epoch) / grad_accum
        self.steps_per_epoch = max(1, math.floor(per_epoch))
        self.total_steps = max_steps or max(1, math.floor(epochs * per_epoch))

    def _extend(self) -> list[list[int]]:
        epoch = self.make_epoch(self.seed + self._epochs_built)
        self._epochs_built += 1
        self._micro_batches.extend(epoch)
        return epoch

    def micro_batches(self, step: int) -> list[list[int]]:
        """Example indices of the ``grad_accum`` micro-batches that make optimizer step ``step``."""
        end = (step + 1) * self.grad_accum
        while len(self._micro_batches) < end:
            self._extend()
        return self._micro_batches[step * self.grad_accum:end]

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch


def shuffled_groups(count: int, size: int) -> Callable[[int], list[list[int]]]:
    """A ``make_epoch`` for ``BatchPlan``: indices ``0..count-1`` shuffled by the epoch's seed and
    cut into groups of ``size`` (a short remainder is dropped), e.g. the prompts of each RL step."""
    def make_epoch(seed: int) -> list[list[int]]:
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
        return [order[i:i + size] for i in range(0, count - size + 1, size)]

    return make_epoch
