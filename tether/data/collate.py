"""Examples to batches: right padding, padding-free packing, and batch samplers.

Padding wastes compute on pad tokens; packing removes them. A packed batch is one row of
concatenated sequences whose `position_ids` restart at 0 at each sequence. With transformers 5
(sdpa or eager attention) a model given `position_ids` and no `attention_mask` finds the sequence
starts itself (`masking_utils.find_packed_sequence_indices`) and builds a block-diagonal causal
mask, so no token attends across a boundary: the logits equal those of each sequence run alone.

Pass `use_cache=False` with a packed batch. Llama's config has `use_cache=True`, the model then
creates an empty KV cache, and transformers only looks for packed sequences when there is no
cache: with one, the batch silently becomes a single causal sequence.
"""

from __future__ import annotations

import random

import torch

from tether.data.tokenize import IGNORE_INDEX
from tether.errors import ConfigError


def pad_batch(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad `input_ids` (with `pad_id`) and `labels` (with -100) to the longest example.

    `labels` is included when the examples have it.

    Shape: input_ids (B, T), attention_mask (B, T) with 1 on real tokens, labels (B, T).
    """
    longest = max(len(example["input_ids"]) for example in examples)
    batch = {"input_ids": [], "attention_mask": []}
    with_labels = "labels" in examples[0]
    if with_labels:
        batch["labels"] = []
    for example in examples:
        padding = longest - len(example["input_ids"])
        batch["input_ids"].append(list(example["input_ids"]) + [pad_id] * padding)
        batch["attention_mask"].append([1] * len(example["input_ids"]) + [0] * padding)
        if with_labels:
            batch["labels"].append(list(example["labels"]) + [IGNORE_INDEX] * padding)
    return {name: torch.tensor(rows, dtype=torch.long) for name, rows in batch.items()}


def pack_batch(examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Concatenate examples into one row, with `position_ids` restarting at 0 per sequence.

    The first label of each sequence is -100: HF shifts labels inside the model, so position t's
    logits are scored against labels[t + 1], and the last token of one sequence must not be
    trained to predict the first token of the next. Examples without `labels` use `input_ids`.
    Call the model with no `attention_mask` and `use_cache=False`: that is what makes it read
    the sequence boundaries from `position_ids` (see the module docstring).

    Shape: input_ids (1, N), labels (1, N), position_ids (1, N), N = sum of example lengths.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for example in examples:
        ids = list(example["input_ids"])
        example_labels = list(example.get("labels", ids))
        input_ids += ids
        labels += [IGNORE_INDEX] + example_labels[1:]
        position_ids += range(len(ids))
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),  # (1, N)
        "labels": torch.tensor([labels], dtype=torch.long),  # (1, N)
        "position_ids": torch.tensor([position_ids], dtype=torch.long),  # (1, N)
    }


def length_bucketed_batches(lengths: list[int], batch_size: int, seed: int,
                            shuffle: bool = True) -> list[list[int]]:
    """Batches of example indices with similar lengths, so padding stays small.

    Indices are shuffled with `seed`, cut into mega-batches of `50 * batch_size`, sorted by length
    (longest first) inside each mega-batch and cut into batches; the batch order is then shuffled.
    Sorting only inside a mega-batch keeps the data order random at large scale. With
    `shuffle=False` the original order is used and batches keep their order. The last batch of a
    mega-batch may be smaller. The same seed gives the same batches.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    mega = 50 * batch_size
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def shuffled_batches(count: int, batch_size: int, seed: int) -> list[list[int]]:
    """Batches of example indices in a random order with no sorting by length: every batch is a
    random sample of the data, so its kinds mix as in the file (preference rows whose kinds differ
    in length, such as refusals and helpful answers, would otherwise share batches by kind). The
    same seed gives the same batches."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, count, batch_size)]


def packed_batches(lengths: list[int], max_tokens_per_batch: int, seed: int,
                   shuffle: bool = True) -> list[list[int]]:
    """Group example indices so each group's total length is at most `max_tokens_per_batch`.

    Greedy first fit: take the examples in a seeded random order (or in order with
    `shuffle=False`); put each into the first group with room, else open a new group. Groups are
    then shuffled with the same seed. First fit uses at most 1.7x the optimal number of groups.
    """
    too_long = [i for i, length in enumerate(lengths) if length > max_tokens_per_batch]
    if too_long:
        raise ConfigError(f"example {too_long[0]} has {lengths[too_long[0]]} tokens, over "
                          f"max_tokens_per_batch={max_tokens_per_batch}; raise the budget or "
                          f"lower max_length")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    groups: list[list[int]] = []
    room: list[int] = []
    for index in order:
        fit = next((g for g, free in enumerate(room) if free >= lengths[index]), None)
        if fit is None:
            groups.append([])
            room.append(max_tokens_per_batch)
            fit = len(groups) - 1
        groups[fit].append(index)
        room[fit] -= lengths[index]
    if shuffle:
        rng.shuffle(groups)
    return groups
