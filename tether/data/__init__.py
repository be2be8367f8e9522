"""Training data: record schemas, loading with validation, tokenization, and collation."""

from tether.data.collate import length_bucketed_batches, pack_batch, packed_batches, pad_batch, shuffled_batches
from tether.data.loading import load_records, prompt_of, read_rows, seeded_subset
from tether.data.records import (
    Location,
    Message,
    PreferenceRecord,
    RankingRecord,
    Record,
    SFTRecord,
    VerifiableRecord,
    expand_ranking,
)
from tether.data.tokenize import (
    IGNORE_INDEX,
    encode_preference,
    encode_prompt,
    encode_sft,
    truncate_prompt_left,
)
from tether.data.validation import validate_row

__all__ = [
    "IGNORE_INDEX", "Location", "Message", "PreferenceRecord", "RankingRecord", "Record",
    "SFTRecord", "VerifiableRecord", "encode_preference", "encode_prompt", "encode_sft",
    "expand_ranking", "length_bucketed_batches", "load_records", "pack_batch", "packed_batches", "shuffled_batches",
    "pad_batch", "prompt_of", "read_rows", "seeded_subset", "truncate_prompt_left", "validate_row",
]
