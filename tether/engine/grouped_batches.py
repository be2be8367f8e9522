"""Batches that keep groups whole: all pairs from one prompt's ranking train in one micro-batch.

A ranking of K responses gives K(K-1)/2 pairs that share a prompt and responses. Spread over
many batches, they form correlated steps, and the model overfits the prompt (InstructGPT,
Ouyang et al. 2022, Sec. 3.5: "we train on all comparisons from each prompt as a single batch
element"). Here a group is a list of example indices that must land in the same micro-batch.
"""

from __future__ import annotations

import random

_OPEN_BATCHES = 32


def grouped_batches(groups: list[list[int]], batch_size: int, seed: int) -> list[list[int]]:
    """Micro-batches of example indices, each made of whole groups, in a seeded random order.

    Groups are shuffled, then placed first-fit: each goes into the first of the (32 newest)
    unfilled batches with room for all of it, so batches fill up even when group sizes differ. A group larger than
    ``batch_size`` gets a batch of its own (over the size) rather than be split. The batch order
    is shuffled again, so a resumed run that rebuilds the plan from the same seed sees the same
    batches. Every index appears exactly once.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rng = random.Random(seed)
    order = [group for group in groups if group]
    rng.shuffle(order)
    batches: list[list[int]] = []
    open_batches: list[list[int]] = []  # not yet full; only the newest few, so cost stays linear
    for group in order:
        home = next((batch for batch in open_batches if len(batch) + len(group) <= batch_size), None)
        if home is None:
            home = []
            batches.append(home)
            open_batches.append(home)
            if len(open_batches) > _OPEN_BATCHES:
                open_batches.pop(0)
        home.extend(group)
        if len(home) >= batch_size:
            open_batches.remove(home)
    rng.shuffle(batches)
    return batches


def groups_by_key(keys: list[str]) -> list[list[int]]:
    """Indices with equal keys together, in order of first appearance: ``["a", "b", "a"]`` ->
    ``[[0, 2], [1]]``."""
    found: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        found.setdefault(key, []).append(index)
    return list(found.values())
