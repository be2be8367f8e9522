"""Loading and validation: every bad input is reported with its exact file, line, field and text."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import datasets
import pytest

from tether.data import (
    Location,
    PreferenceRecord,
    SFTRecord,
    VerifiableRecord,
    encode_prompt,
    load_records,
)
from tether.errors import ConfigError, DataValidationError
from tether.models.tiny import tiny_tokenizer


def write_jsonl(tmp_path: Path, *lines: str | bytes | dict) -> Path:
    """One line per argument: dicts are dumped as JSON, str/bytes written as they are."""
    path = tmp_path / "data.jsonl"
    raw = [line if isinstance(line, bytes)
           else (json.dumps(line) if isinstance(line, dict) else line).encode()
           for line in lines]
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


def problems(source, kind: str, **options) -> list[str]:
    with pytest.raises(DataValidationError) as info:
        load_records(source, kind, **options)
    return [str(problem) for problem in info.value.problems]


SFT = {"prompt": "What is 12 plus 7?", "completion": "19"}


# ---------------------------------------------------------------- valid sources


def test_sft_file_with_both_forms_and_blank_lines(tmp_path):
    chat = {"id": "c1", "messages": [{"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": "hello"}]}
    path = write_jsonl(tmp_path, {"id": 7, **SFT}, "", "   ", chat)
    records = load_records(path, "sft")
    assert records == [
        SFTRecord(prompt="What is 12 plus 7?", completion="19", id="7",
                  location=Location(str(path), 1)),
        SFTRecord(messages=chat["messages"], id="c1", location=Location(str(path), 4)),
    ]


def test_conversational_preference_in_trl_format(tmp_path):
    row = {"prompt": [{"role": "user", "content": "Capital of France?"}],
           "chosen": [{"role": "assistant", "content": "Paris."}],
           "rejected": [{"role": "assistant", "content": "Lyon."}]}
    mixed = {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}
    path = write_jsonl(tmp_path, row, mixed)
    first, second = load_records(path, "preference")
    assert first.chosen == [{"role": "assistant", "content": "Paris."}]
    assert (second.chosen, second.rejected) == ("4", "5")


def test_ranking_expands_to_pairs_and_skips_ties(tmp_path):
    ranking = {"id": "r1", "prompt": "Say hi", "responses": ["a", "b", "c", "d"],
               "ranks": [2, 1, 2, 3]}
    path = write_jsonl(tmp_path, ranking)
    pairs = load_records(path, "ranking")
    # ranks 2,1,2,3: responses 0 and 2 tie, so 6 - 1 = 5 pairs, lower rank is chosen
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("b", "a"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]
    assert {p.group_id for p in pairs} == {"r1"}
    assert pairs[0] == PreferenceRecord(prompt="Say hi", chosen="b", rejected="a", id="r1/0-1",
                                        location=Location(str(path), 1), group_id="r1")


def test_ranking_without_id_groups_by_location_and_warns_when_all_tied(tmp_path):
    path = write_jsonl(tmp_path, {"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2]},
                       {"prompt": "q", "responses": ["a", "b"], "ranks": [1, 1]})
    with pytest.warns(UserWarning, match="^1 of 2 rankings have every response tied"):
        pairs = load_records(path, "ranking")
    assert [p.group_id for p in pairs] == [f"{path}:1"]


def test_verifiable_keeps_extra_columns_for_reward_functions():
    rows = [{"id": "q1", "prompt": "12 + 7?", "answer": 19, "level": 2, "topic": "add"}]
    assert load_records(rows, "verifiable") == [VerifiableRecord(
        prompt="12 + 7?", answer="19", extras={"level": 2, "topic": "add"}, id="q1",
        location=Location("<list>", 0))]


def test_dataset_source_reports_row_index():
    # A Dataset fills absent columns with None: that reads as "missing", not "wrong type".
    dataset = datasets.Dataset.from_list([SFT, {"prompt": "hi", "completion": None}])
    assert problems(dataset, "sft") == ["<dataset>:1: field 'completion': missing required field"]
    records = load_records(dataset.select([0]), "sft")
    assert records[0].location == Location("<dataset>", 0)


CHAT_PREFERENCE = {"prompt": [{"role": "user", "content": "Capital of France?"}],
                   "chosen": [{"role": "assistant", "content": "Paris."}],
                   "rejected": [{"role": "assistant", "content": "Lyon."}]}


@pytest.mark.parametrize("form", ["parquet", "save_to_disk"])
def test_parquet_files_and_saved_datasets_load_like_jsonl(tmp_path, form):
    dataset = datasets.Dataset.from_list([CHAT_PREFERENCE, {**CHAT_PREFERENCE, "rejected": None}])
    path = tmp_path / ("prefs.parquet" if form == "parquet" else "prefs")
    dataset.to_parquet(str(path)) if form == "parquet" else dataset.save_to_disk(str(path))
    assert problems(path, "preference") == [f"{path}:1: field 'rejected': missing required field"]
    dataset.select([0]).to_parquet(str(tmp_path / "one.parquet"))
    dataset.select([0]).save_to_disk(str(tmp_path / "one"))
    for source in (tmp_path / "one.parquet", str(tmp_path / "one")):
        (record,) = load_records(source, "preference")
        assert (record.prompt, record.chosen, record.rejected) == (
            CHAT_PREFERENCE["prompt"], CHAT_PREFERENCE["chosen"], CHAT_PREFERENCE["rejected"])
        assert record.location == Location(str(source), 0)


def test_a_saved_dataset_dict_asks_for_one_split(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list([SFT])}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataValidationError, match="holds the splits train; name one folder"):
        load_records(tmp_path / "d", "sft")
    assert len(load_records(tmp_path / "d" / "train", "sft")) == 1


def test_a_broken_parquet_file_and_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataValidationError, match="cannot read the parquet file"):
        load_records(tmp_path / "bad.parquet", "sft")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match="not a dataset saved with datasets' save_to_disk"):
        load_records(tmp_path / "empty", "sft")


# ---------------------------------------------------------------- one test per problem


def test_invalid_json(tmp_path):
    path = write_jsonl(tmp_path, SFT, '{"prompt": "a" "completion": "b"}')
    assert problems(path, "sft") == [
        f"{path}:2: invalid JSON: Expecting ',' delimiter (column 16)"]


def test_invalid_utf8_names_its_line_and_byte(tmp_path):
    path = write_jsonl(tmp_path, SFT, SFT, b'{"prompt": "caf\xe9", "completion": "x"}')
    assert problems(path, "sft") == [f"{path}:3: invalid UTF-8: byte 0xe9 at column 16"]


def test_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path, '["prompt", "completion"]')
    assert problems(path, "sft") == [f"{path}:1: expected a JSON object, got list"]


def test_missing_field(tmp_path):
    path = write_jsonl(tmp_path, {"prompt": "hi"})
    assert problems(path, "sft") == [f"{path}:1: field 'completion': missing required field"]


def test_empty_and_whitespace_fields(tmp_path):
    path = write_jsonl(tmp_path, {"prompt": " \n\t", "completion": ""})
    assert problems(path, "sft") == [
        f"{path}:1: field 'prompt': must not be empty or whitespace-only",
        f"{path}:1: field 'completion': must not be empty or whitespace-only"]


def test_wrong_types(tmp_path):
    path = write_jsonl(
        tmp_path,
        {"prompt": "p", "chosen": 3, "rejected": "r"},
        {"prompt": "p", "chosen": [{"role": "assistant", "content": "c"}], "rejected": "r"},
        {"prompt": [{"role": "user", "content": "p"}],
         "chosen": [{"role": "user", "content": "c"}], "rejected": "r"},
    )
    assert problems(path, "preference") == [
        f"{path}:1: field 'chosen': expected a string, got number",
        f"{path}:2: field 'chosen': expected a string (the prompt is a string, not messages), "
        f"got list",
        f"{path}:3: field 'chosen[0].role': must be 'assistant' in a completion, got 'user'"]


def test_wrong_message_shapes(tmp_path):
    path = write_jsonl(
        tmp_path,
        {"messages": "hi"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}, "yo"]},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "assistant", "content": "hi"}]},
    )
    assert problems(path, "sft") == [
        f"{path}:1: field 'messages': expected a list of messages, got string",
        f"{path}:2: field 'messages[1].role': must be one of system, user, assistant, tool, got 'bot'",
        f"{path}:3: field 'messages[1]': expected a message object with 'role' and 'content', "
        f"got string",
        f"{path}:4: field 'messages': has no assistant message to learn from",
        f"{path}:5: field 'messages[0].role': a conversation must not start with an assistant "
        f"turn"]


def test_chosen_identical_to_rejected(tmp_path):
    path = write_jsonl(tmp_path, {"prompt": "p", "chosen": "Same.", "rejected": "Same. "})
    assert problems(path, "preference") == [
        f"{path}:1: field 'rejected': identical to 'chosen'; a preference pair needs two "
        f"different responses"]


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write_jsonl(tmp_path, {"id": "a", **SFT}, {"id": "b", **SFT}, {"id": "a", **SFT})
    assert problems(path, "sft") == [
        f"{path}:3: field 'id': duplicate id 'a' (first used at {path}:1)"]


def test_ranking_lengths_must_match(tmp_path):
    path = write_jsonl(tmp_path, {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2]})
    assert problems(path, "ranking") == [
        f"{path}:1: field 'ranks': has 2 entries but 'responses' has 3"]


def test_ranking_values(tmp_path):
    path = write_jsonl(tmp_path, {"prompt": "p", "responses": ["a", "a"], "ranks": [0, "1"]})
    assert problems(path, "ranking") == [
        f"{path}:1: field 'responses[1]': identical to responses[0]",
        f"{path}:1: field 'ranks[0]': must be 1 or more (1 = best), got 0",
        f"{path}:1: field 'ranks[1]': expected an integer, got string"]


def test_all_problems_of_a_file_come_in_one_error(tmp_path):
    path = write_jsonl(tmp_path, "{", SFT, {"prompt": "p"}, {"completion": 1, "prompt": "p"})
    with pytest.raises(DataValidationError) as info:
        load_records(path, "sft")
    error = info.value
    assert [(p.file, p.line, p.field) for p in error.problems] == [
        (str(path), 1, None), (str(path), 3, "completion"), (str(path), 4, "completion")]
    assert str(error).splitlines()[0] == "3 invalid record(s):"


def test_missing_file(tmp_path):
    with pytest.raises(DataValidationError) as info:
        load_records(tmp_path / "nope.jsonl", "sft")
    path = tmp_path / "nope.jsonl"
    assert str(info.value) == f"{path}: cannot read the file: No such file or directory"


def test_crlf_line_endings_and_byte_order_mark(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(SFT).encode() + b"\r\n\r\n"
                     + json.dumps(SFT).encode() + b"\r\n")
    assert [r.location.line for r in load_records(path, "sft")] == [1, 3]


def test_empty_file_is_an_error(tmp_path):
    for content in (b"", b"\n  \n\n"):
        path = tmp_path / "empty.jsonl"
        path.write_bytes(content)
        with pytest.raises(DataValidationError) as info:
            load_records(path, "sft")
        assert str(info.value) == f"{path}: no records: the source is empty or has only blank lines"


def test_bad_options_are_config_errors(tmp_path):
    path = write_jsonl(tmp_path, SFT)
    with pytest.raises(ConfigError, match="unknown record kind 'dpo'"):
        load_records(path, "dpo")
    with pytest.raises(ConfigError, match="max_prompt_tokens needs a tokenizer"):
        load_records(path, "sft", max_prompt_tokens=8)
    with pytest.raises(ConfigError, match="unknown truncation 'right'"):
        load_records(path, "sft", truncation="right")


# ---------------------------------------------------------------- prompt token budget


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


LONG = {"prompt": "The quick brown fox jumps over the lazy dog.", "completion": "ok"}


@pytest.fixture(scope="module")
def budget(tokenizer):
    """A prompt budget that fits SFT's prompt but not LONG's."""
    budget = len(encode_prompt(SFT["prompt"], tokenizer))
    assert len(encode_prompt(LONG["prompt"], tokenizer)) > budget
    return budget


def test_prompt_over_budget_is_an_error_by_default(tmp_path, tokenizer, budget):
    path = write_jsonl(tmp_path, SFT, LONG)
    length = len(encode_prompt(LONG["prompt"], tokenizer))  # chat template included
    assert problems(path, "sft", tokenizer=tokenizer, max_prompt_tokens=budget) == [
        f"{path}:2: field 'prompt': prompt is {length} tokens, over max_prompt_tokens={budget} "
        f"(use truncation='truncate_left' or 'drop' to allow it)"]


def test_truncate_left_keeps_the_end_of_the_prompt_and_warns_once(tmp_path, tokenizer, budget):
    path = write_jsonl(tmp_path, SFT, LONG, LONG)
    with pytest.warns(UserWarning) as caught:
        records = load_records(path, "sft", tokenizer=tokenizer, max_prompt_tokens=budget,
                               truncation="truncate_left")
    assert [str(w.message) for w in caught] == [
        f"truncated 2 of 3 prompts to their last {budget} tokens (max_prompt_tokens)"]
    assert records[0].prompt == SFT["prompt"]
    # the tail of the text, cut at a token boundary, filling the budget exactly
    assert records[1].prompt == records[2].prompt == "over the lazy dog."
    assert len(encode_prompt(records[1].prompt, tokenizer)) == budget


def test_truncate_left_drops_oldest_messages_of_a_chat_first(tmp_path, tokenizer):
    old = [{"role": "user", "content": "Hello, how are you today?"},
           {"role": "assistant", "content": "Fine."}]
    last = [{"role": "user", "content": "What is 12 plus 7?"},
            {"role": "assistant", "content": "19"}]
    path = write_jsonl(tmp_path, {"messages": old + last})
    budget = len(encode_prompt(last[:1], tokenizer))
    with pytest.warns(UserWarning, match="truncated 1 of 1 prompts"):
        (record,) = load_records(path, "sft", tokenizer=tokenizer, max_prompt_tokens=budget,
                                 truncation="truncate_left")
    assert record.messages == last


def test_drop_skips_long_prompts_and_warns_once(tmp_path, tokenizer, budget):
    path = write_jsonl(tmp_path, LONG, SFT, LONG)
    with pytest.warns(UserWarning) as caught:
        records = load_records(path, "sft", tokenizer=tokenizer, max_prompt_tokens=budget,
                               truncation="drop")
    assert [str(w.message) for w in caught] == [
        f"dropped 2 of 3 records whose prompt is over max_prompt_tokens={budget}"]
    assert [r.location.line for r in records] == [2]


def test_budget_within_limit_gives_no_warning(tmp_path, tokenizer):
    path = write_jsonl(tmp_path, SFT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_records(path, "sft", tokenizer=tokenizer, max_prompt_tokens=64,
                                truncation="drop")) == 1


def test_chat_prompt_over_budget_is_reported_on_messages(tmp_path, tokenizer):
    chat = [{"role": "user", "content": "What is 12 plus 7?"},
            {"role": "assistant", "content": "19"}]
    path = write_jsonl(tmp_path, {"messages": chat})
    length = len(encode_prompt(chat[:1], tokenizer))
    assert problems(path, "sft", tokenizer=tokenizer, max_prompt_tokens=length - 1) == [
        f"{path}:1: field 'messages': prompt is {length} tokens, over "
        f"max_prompt_tokens={length - 1} (use truncation='truncate_left' or 'drop' to allow it)"]


def test_truncate_left_cannot_go_below_the_template(tmp_path, tokenizer):
    path = write_jsonl(tmp_path, SFT)
    overhead = len(encode_prompt(" ", tokenizer)) - 1  # role headers and generation prompt
    assert problems(path, "sft", tokenizer=tokenizer, max_prompt_tokens=overhead,
                    truncation="truncate_left") == [
        f"{path}:1: field 'prompt': prompt cannot be cut to max_prompt_tokens={overhead}: the "
        f"chat template alone leaves no room for its text"]


def test_seeded_subset_draws_across_the_file_in_order():
    from tether.data import seeded_subset

    rows = [f"harmful-{i}" for i in range(50)] + [f"benign-{i}" for i in range(50)]  # sorted by kind
    subset = seeded_subset(rows, 20, seed=0)
    assert subset == seeded_subset(rows, 20, seed=0) != seeded_subset(rows, 20, seed=1)
    assert len(set(subset)) == 20 and subset == sorted(subset, key=rows.index)  # file order kept
    assert any(r.startswith("benign") for r in subset) and any(r.startswith("harmful") for r in subset)
    assert seeded_subset(rows, None, seed=0) == rows == seeded_subset(rows, 500, seed=0)


# ---------------------------------------------------------------- TRL's implicit prompt

def test_implicit_prompt_preference_takes_the_shared_messages_as_the_prompt():
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "What color is the sky?"}
    row = {"chosen": [system, user, {"role": "assistant", "content": "It is blue."}],
           "rejected": [system, user, {"role": "assistant", "content": "It is green."}]}
    (record,) = load_records([row], "preference")
    assert record.prompt == [system, user]
    assert record.chosen == [{"role": "assistant", "content": "It is blue."}]
    assert record.rejected == [{"role": "assistant", "content": "It is green."}]


def test_implicit_prompt_problems_are_named():
    user = {"role": "user", "content": "Hi"}
    other_user = {"role": "user", "content": "Hello"}
    reply = {"role": "assistant", "content": "Hey."}
    rows = [{"chosen": [user, reply], "rejected": [other_user, reply]},  # nothing shared
            {"chosen": [user, reply], "rejected": [user, reply]},  # nothing after the prompt
            {"chosen": [user, reply, other_user, reply], "rejected": [user, reply, user, reply]}]
    assert problems(rows, "preference") == [
        "<list>:0: field 'prompt': missing required field (chosen and rejected share no first "
        "message to take as the prompt)",
        "<list>:1: field 'chosen': has no messages after the prompt it shares with the other answer",
        "<list>:1: field 'rejected': has no messages after the prompt it shares with the other answer",
        "<list>:2: field 'chosen': after the prompt it shares with the other answer, only assistant "
        "messages may follow",
        "<list>:2: field 'rejected': after the prompt it shares with the other answer, only "
        "assistant messages may follow"]


def test_sft_text_rows_and_mixed_forms():
    (record,) = load_records([{"text": "The sky is blue."}], "sft")
    assert record == SFTRecord(text="The sky is blue.", location=Location("<list>", 0))
    assert problems([{"text": "x", "prompt": "p", "completion": "c"}, {"text": "  "}], "sft") == [
        "<list>:0: field 'text': give one of 'text', 'messages' or 'prompt' + 'completion', not several",
        "<list>:1: field 'text': must not be empty or whitespace-only"]
