"""Load and validate a whole data source before any training starts.

`load_records` reads every row (JSONL, parquet, a `save_to_disk` folder, a `datasets.Dataset`),
checks it, and either returns all records or raises one `DataValidationError` listing every
problem (`FILE:LINE: field 'FIELD': PROBLEM`), so a user fixes a file in one round instead of one
error per run.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from tether.data.records import (
    Location,
    Prompt,
    RankingRecord,
    Record,
    SFTRecord,
    expand_ranking,
)
from tether.data.tokenize import encode_prompt, truncate_prompt_left
from tether.data.validation import KINDS, validate_row
from tether.errors import ConfigError, DataValidationError

T = TypeVar("T")

Truncation = Literal["error", "truncate_left", "drop"]
TRUNCATIONS = ("error", "truncate_left", "drop")

Row = tuple[Location, Any, DataValidationError | None]


# A file saved with json.dump(rows) instead of one json.dumps(row) per line: say so, and how to convert.
_JSON_ARRAY_PROBLEM = (
    "the file holds a JSON array ([{{...}}, ...]), not JSONL (one JSON object per line). Convert it "
    "with: python -c \"import json,sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))]\" "
    "{path} > {stem}.jsonl")


def _is_json_array_of_rows(data: bytes) -> bool:
    data = data.removeprefix(codecs.BOM_UTF8).lstrip()
    if not data.startswith(b"["):
        return False
    try:
        rows = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(rows, list) and bool(rows) and all(isinstance(row, dict) for row in rows)


def _jsonl_rows(path: Path) -> Iterator[Row]:
    """Rows of a JSONL file with 1-based line numbers. The file is read as bytes and decoded
    line by line, so a bad byte is reported on its own line instead of failing the whole read."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataValidationError(f"cannot read the file: {error.strerror}",
                                  file=str(path)) from None
    if _is_json_array_of_rows(data):
        raise DataValidationError(_JSON_ARRAY_PROBLEM.format(path=path, stem=path.with_suffix("")),
                                  file=str(path))
    for number, raw in enumerate(data.split(b"\n"), start=1):
        location = Location(str(path), number)
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]  # editors on Windows write a byte-order mark
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield location, None, DataValidationError(
                f"invalid UTF-8: byte 0x{raw[error.start]:02x} at column {error.start + 1}",
                file=location.file, line=number)
            continue
        if not text.strip():
            continue  # blank lines are allowed (a trailing newline makes one)
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            yield location, None, DataValidationError(
                f"invalid JSON: {error.msg} (column {error.colno})", file=location.file,
                line=number)
        except RecursionError:
            yield location, None, DataValidationError(
                "invalid JSON: nested too deeply to read", file=location.file, line=number)
        except ValueError as error:  # e.g. an integer of more than 4300 digits
            yield location, None, DataValidationError(
                f"invalid JSON: {str(error).split(';')[0]}", file=location.file, line=number)
        else:
            yield location, row, None


def _table_rows(path: Path) -> Iterator[Row]:
    """Rows of a parquet file or a `datasets.save_to_disk` folder, with 0-based row indices."""
    if path.is_dir():
        import datasets  # imported here: it is slow to import and only needed for this source

        try:
            table = datasets.load_from_disk(str(path))
        except FileNotFoundError as error:
            raise DataValidationError(f"not a dataset saved with datasets' save_to_disk: {error}",
                                      file=str(path)) from None
        if isinstance(table, datasets.DatasetDict):
            raise DataValidationError(
                f"holds the splits {', '.join(table)}; name one folder, e.g. {path / next(iter(table))}",
                file=str(path))
        rows = iter(table)
    else:
        import pyarrow.parquet as parquet  # comes with datasets

        try:
            rows = iter(parquet.read_table(path).to_pylist())
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise DataValidationError(f"cannot read the parquet file: {error}", file=str(path)) from None
    for index, row in enumerate(rows):
        yield Location(str(path), index), row, None


def read_rows(source: Any) -> Iterator[Row]:
    """`(location, row, problem)` for each row of a data source: a JSONL file, a parquet file
    (`.parquet`), a folder written by `datasets.Dataset.save_to_disk`, a `datasets.Dataset`, or a
    list of dicts. Exactly one of `row` and `problem` is meaningful (`problem` is None when read)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir() or path.suffix == ".parquet":
            yield from _table_rows(path)
        else:
            yield from _jsonl_rows(path)
        return
    if isinstance(source, list):
        name = "<list>"
    else:
        import datasets  # imported here: it is slow to import and only needed for this source

        if not isinstance(source, datasets.Dataset):
            raise ConfigError(f"cannot read records from {type(source).__name__}; pass a JSONL "
                              f"or parquet path, a save_to_disk folder, a datasets.Dataset (one "
                              f"split), or a list of dicts")
        name = "<dataset>"
    for index, row in enumerate(source):
        yield Location(name, index), row, None


def _raw_id(row: Any) -> str | None:
    value = row.get("id") if isinstance(row, dict) else None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)


def prompt_of(record: Record) -> Prompt:
    """The part of a record the model reads before answering. For a chat SFT record: every
    message before the last assistant turn."""
    if isinstance(record, SFTRecord):
        if record.messages is None:
            return record.prompt
        last = max(i for i, m in enumerate(record.messages) if m["role"] == "assistant")
        return record.messages[:last]
    return record.prompt


def _with_prompt(record: Record, prompt: Prompt) -> Record:
    if isinstance(record, SFTRecord) and record.messages is not None:
        reply = record.messages[len(prompt_of(record)):]  # from the last assistant turn on
        return dataclasses.replace(record, messages=prompt + reply)
    return dataclasses.replace(record, prompt=prompt)


def _check_options(kind: str, tokenizer: Any, max_prompt_tokens: int | None, truncation: str
                   ) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    if truncation not in TRUNCATIONS:
        raise ConfigError(f"unknown truncation {truncation!r}; expected one of "
                          f"{', '.join(TRUNCATIONS)}")
    if max_prompt_tokens is not None and tokenizer is None:
        raise ConfigError("max_prompt_tokens needs a tokenizer to count prompt tokens")


def _fit_prompt(record: Record, tokenizer: Any, max_prompt_tokens: int | None,
                truncation: str) -> Record | str | None:
    """Apply the prompt budget: the record to keep (truncated or not), None to drop it, or the
    text of a problem."""
    prompt = prompt_of(record)
    if max_prompt_tokens is None or not prompt:
        return record
    length = len(encode_prompt(prompt, tokenizer))
    if length <= max_prompt_tokens:
        return record
    if truncation == "error":
        return (f"prompt is {length} tokens, over max_prompt_tokens={max_prompt_tokens} "
                f"(use truncation='truncate_left' or 'drop' to allow it)")
    if truncation == "drop":
        return None
    shorter = truncate_prompt_left(prompt, tokenizer, max_prompt_tokens)
    if shorter is None:
        return (f"prompt cannot be cut to max_prompt_tokens={max_prompt_tokens}: the chat "
                f"template alone leaves no room for its text")
    return _with_prompt(record, shorter)


def load_records(source: str | Path | Any, kind: str, *, tokenizer: Any = None,
                 max_prompt_tokens: int | None = None, truncation: Truncation = "error"
                 ) -> list[Record]:
    """Read and validate every record of `source` (a JSONL or parquet path, a `save_to_disk`
    folder, a `datasets.Dataset`, a list of dicts: see `read_rows`).

    `kind` is "sft", "preference", "ranking", "verifiable" or "prompt". Rankings come back expanded into
    `PreferenceRecord` pairs sharing the ranking's `group_id` (tied pairs skipped).

    Prompts longer than `max_prompt_tokens` (counted with `tokenizer`, chat template included)
    follow `truncation`: "error" reports them, "truncate_left" keeps their last tokens, "drop"
    skips the record; the last two warn once with a count.

    Raises DataValidationError with every problem found (`.problems`), or for an empty source.
    """
    _check_options(kind, tokenizer, max_prompt_tokens, truncation)
    problems: list[DataValidationError] = []
    records: list[Record] = []
    first_seen: dict[str, Location] = {}
    rows = truncated = dropped = 0
    for location, row, problem in read_rows(source):
        rows += 1
        if problem is not None:
            problems.append(problem)
            continue
        record, row_problems = validate_row(row, kind, location)
        problems.extend(row_problems)
        # Ids are compared on raw rows, so a duplicate is named even when one copy is invalid.
        raw_id = _raw_id(row)
        if raw_id is not None and raw_id in first_seen:
            problems.append(DataValidationError(
                f"duplicate id {raw_id!r} (first used at {first_seen[raw_id]})",
                file=location.file, line=location.line, field="id"))
        elif raw_id is not None:
            first_seen[raw_id] = location
        if record is None:
            continue
        fitted = _fit_prompt(record, tokenizer, max_prompt_tokens, truncation)
        if isinstance(fitted, str):
            field = "messages" if isinstance(record, SFTRecord) and record.is_chat else "prompt"
            problems.append(DataValidationError(fitted, file=location.file, line=location.line,
                                                field=field))
        elif fitted is None:
            dropped += 1
        else:
            truncated += fitted is not record
            records.append(fitted)
    if rows == 0:
        name = str(source) if isinstance(source, (str, Path)) else None
        raise DataValidationError("no records: the source is empty or has only blank lines",
                                  file=name)
    if problems:
        raise DataValidationError(problems[0].problem, problems=problems)
    valid = len(records) + dropped
    if truncated:
        warnings.warn(f"truncated {truncated} of {valid} prompts to their last "
                      f"{max_prompt_tokens} tokens (max_prompt_tokens)", stacklevel=2)
    if dropped:
        warnings.warn(f"dropped {dropped} of {valid} records whose prompt is over "
                      f"max_prompt_tokens={max_prompt_tokens}", stacklevel=2)
    if kind == "ranking":
        return _expand_rankings(records)
    return records


def _expand_rankings(rankings: list[RankingRecord]) -> list[Record]:
    pairs: list[Record] = []
    all_tied = 0
    for ranking in rankings:
        expanded = expand_ranking(ranking)
        all_tied += not expanded
        pairs.extend(expanded)
    if all_tied:
        warnings.warn(f"{all_tied} of {len(rankings)} rankings have every response tied and "
                      f"give no preference pairs", stacklevel=3)
    return pairs


def seeded_subset(rows: list[T], count: int | None, seed: int) -> list[T]:
    """``count`` rows drawn without replacement with ``seed``, in file order; all rows if ``count`` is
    None or not smaller. A draw rather than the first N: data files are often sorted by kind."""
    if count is None or count >= len(rows):
        return list(rows)
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), count))]
