"""Collation: padding, padding-free packing (proved against a real model), batch samplers."""

from __future__ import annotations

import pytest
import torch

from tether.data import length_bucketed_batches, pack_batch, packed_batches, pad_batch
from tether.errors import ConfigError
from tether.models.tiny import tiny_llama

IGNORE = -100


def test_pad_batch_right_pads_ids_mask_and_labels():
    batch = pad_batch([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                       {"input_ids": [8], "labels": [8]}], pad_id=3)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["input_ids"].dtype == torch.long


def test_pad_batch_without_labels():
    batch = pad_batch([{"input_ids": [5]}, {"input_ids": [6, 7]}], pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].tolist() == [[5, 0], [6, 7]]


def test_pack_batch_restarts_positions_and_masks_boundaries():
    batch = pack_batch([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                        {"input_ids": [8, 9], "labels": [8, 9]},
                        {"input_ids": [4]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 4]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    # label 8 at a sequence start would train token 7 to predict the next sequence's first token
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9, IGNORE]]


@pytest.fixture(scope="module")
def packed_case():
    model, _ = tiny_llama(seed=0)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(4, 300, (length,), generator=generator).tolist()
                 for length in (5, 9, 3)]
    batch = pack_batch([{"input_ids": s, "labels": s} for s in sequences])
    return model, sequences, batch


def test_packed_logits_equal_each_sequence_run_alone(packed_case):
    model, sequences, batch = packed_case
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits  # (1, 17, V)
        alone = torch.cat([model(input_ids=torch.tensor([s])).logits for s in sequences], dim=1)
        naive = model(input_ids=batch["input_ids"]).logits  # one long causal sequence
        # with a KV cache (config.use_cache=True) transformers skips packed-sequence detection
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    assert packed.shape == (1, 17, model.config.vocab_size)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    # controls: in both, later sequences attend to the earlier ones
    assert not torch.allclose(naive[:, 5:], alone[:, 5:], atol=1e-3)
    assert not torch.allclose(cached[:, 5:], alone[:, 5:], atol=1e-3)


def test_packed_loss_has_no_term_across_a_boundary(packed_case):
    model, sequences, batch = packed_case
    with torch.no_grad():
        packed_loss = model(**batch, use_cache=False).loss
        # each sequence alone predicts len - 1 tokens; the packed mean must weigh them the same
        total = sum(model(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss * (len(s) - 1)
                    for s in sequences)
        crossing_labels = batch["input_ids"].clone()  # no -100 at the boundaries
        crossing_loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                              labels=crossing_labels, use_cache=False).loss
    expected = total / sum(len(s) - 1 for s in sequences)
    torch.testing.assert_close(packed_loss, expected, atol=1e-5, rtol=0)
    assert abs(crossing_loss - expected) > 1e-4


def test_length_buckets_group_similar_lengths_deterministically():
    lengths = [(i * 37) % 101 for i in range(1000)]
    batches = length_bucketed_batches(lengths, batch_size=4, seed=1)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    assert batches == length_bucketed_batches(lengths, batch_size=4, seed=1)
    assert batches != length_bucketed_batches(lengths, batch_size=4, seed=2)
    # 1000 indices = 5 mega-batches of 200 = 50 full batches each
    assert [len(b) for b in batches] == [4] * 250
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / 250
    assert spread < 3  # random batches of 4 from 0..100 spread about 60


def test_length_buckets_without_shuffle_sort_each_mega_batch():
    lengths = [3, 9, 1, 7, 5]
    # batch_size 1 -> mega-batch 50 holds all five; longest first
    assert length_bucketed_batches(lengths, batch_size=1, seed=0, shuffle=False) == [
        [1], [3], [4], [0], [2]]
    lengths = [1, 2] * 100 + [9]  # 201 indices, batch_size 2 -> mega-batches of 100
    batches = length_bucketed_batches(lengths, batch_size=2, seed=0, shuffle=False)
    assert [len(b) for b in batches] == [2] * 100 + [1]
    assert batches[0] == [1, 3] and batches[-1] == [200]


def test_packed_batches_first_fit():
    # in order: 5 -> g0, 4 -> g1, 3 -> g0 (8), 2 -> g1 (6), 6 -> g2
    assert packed_batches([5, 4, 3, 2, 6], max_tokens_per_batch=8, seed=0, shuffle=False) == [
        [0, 2], [1, 3], [4]]


def test_packed_batches_respect_budget_and_seed():
    lengths = [(i * 53) % 97 + 1 for i in range(300)]
    groups = packed_batches(lengths, max_tokens_per_batch=256, seed=3)
    assert sorted(i for group in groups for i in group) == list(range(300))
    assert all(sum(lengths[i] for i in group) <= 256 for group in groups)
    assert groups == packed_batches(lengths, max_tokens_per_batch=256, seed=3)
    assert groups != packed_batches(lengths, max_tokens_per_batch=256, seed=4)
    assert len(groups) <= 1.1 * sum(lengths) / 256 + 1  # first fit packs tightly here


def test_packed_batches_refuse_an_example_over_budget():
    with pytest.raises(ConfigError, match="example 1 has 9 tokens, over max_tokens_per_batch=8"):
        packed_batches([3, 9], max_tokens_per_batch=8, seed=0)


def test_shuffled_batches_cover_every_row_once_without_sorting_by_length():
    from tether.data import shuffled_batches

    batches = shuffled_batches(103, 8, seed=3)
    assert sorted(i for batch in batches for i in batch) == list(range(103))
    assert [len(batch) for batch in batches] == [8] * 12 + [7]
    assert shuffled_batches(103, 8, seed=3) == batches and shuffled_batches(103, 8, seed=4) != batches


def test_shuffle_batching_mixes_rows_that_bucketing_separates():
    """Two kinds of rows that differ only in length: length buckets put each kind in its own batches;
    shuffled batches mix them."""
    from tether.algorithms.common import epoch_schedule
    from tether.config import DataSettings

    lengths = [10] * 64 + [100] * 64  # short kind, then long kind
    kinds = lambda batch: {lengths[i] for i in batch}  # noqa: E731
    bucketed = epoch_schedule(lengths, DataSettings(train="x.jsonl"), 8)(0)
    shuffled = epoch_schedule(lengths, DataSettings(train="x.jsonl", batching="shuffle"), 8)(0)
    assert all(len(kinds(batch)) == 1 for batch in bucketed)
    assert sum(len(kinds(batch)) == 2 for batch in shuffled) >= len(shuffled) // 2
