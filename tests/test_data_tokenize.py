"""Tokenization: the prompt/completion split, loss masks, end-of-turn tokens, truncation."""

from __future__ import annotations

import pytest

from tether.data import (
    IGNORE_INDEX,
    Location,
    PreferenceRecord,
    SFTRecord,
    encode_preference,
    encode_prompt,
    encode_sft,
)
from tether.errors import ConfigError, DataValidationError
from tether.models.tiny import tiny_tokenizer

PROMPT_TEXT = "<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def labeled_spans(tokenizer, example) -> list[str]:
    """The text of each run of consecutive trained tokens (label != -100)."""
    spans, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the ids themselves; HF shifts them
            current.append(token)
        elif current:
            spans, current = spans + [tokenizer.decode(current)], []
    return spans + ([tokenizer.decode(current)] if current else [])


def test_plain_sft_is_wrapped_in_the_chat_template(tokenizer):
    record = SFTRecord(prompt="What is 12 plus 7?", completion="19")
    example = encode_sft(record, tokenizer, max_length=64)
    prompt_ids = ids(tokenizer, PROMPT_TEXT)
    # the template's newline after <|im_end|> is dropped: the sequence ends where the turn ends
    assert example["input_ids"] == ids(tokenizer, PROMPT_TEXT + "19<|im_end|>")
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + example["input_ids"][
        len(prompt_ids):]
    assert labeled_spans(tokenizer, example) == ["19<|im_end|>"]
    assert example["input_ids"][-1] == tokenizer.eos_token_id


def test_plain_sft_without_chat_template_appends_eos(tokenizer):
    plain = tiny_tokenizer()
    plain.chat_template = None
    example = encode_sft(SFTRecord(prompt="Hello, ", completion="fine."), plain, max_length=64)
    prompt_ids, completion_ids = ids(plain, "Hello, "), ids(plain, "fine.")
    assert example["input_ids"] == prompt_ids + completion_ids + [plain.eos_token_id]
    assert example["labels"] == ([IGNORE_INDEX] * len(prompt_ids) + completion_ids
                                 + [plain.eos_token_id])


def test_multi_turn_chat_trains_on_assistant_turns_only(tokenizer):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    example = encode_sft(SFTRecord(messages=messages), tokenizer, max_length=128)
    assert tokenizer.decode(example["input_ids"]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>")
    assert labeled_spans(tokenizer, example) == ["Hello<|im_end|>", "4<|im_end|>"]


def test_sft_truncates_the_completion_from_the_right(tokenizer):
    record = SFTRecord(prompt="What is 12 plus 7?",
                       completion="The answer is 19. Here is how to do it step by step.")
    full = encode_sft(record, tokenizer, max_length=256)
    prompt_length = len(ids(tokenizer, PROMPT_TEXT))
    cut = encode_sft(record, tokenizer, max_length=prompt_length + 3)
    assert cut["input_ids"] == full["input_ids"][:prompt_length + 3]
    assert cut["labels"] == full["labels"][:prompt_length + 3]


def test_prompt_that_fills_max_length_is_an_error(tokenizer):
    record = SFTRecord(prompt="What is 12 plus 7?", completion="19",
                       location=Location("train.jsonl", 4))
    prompt_length = len(ids(tokenizer, PROMPT_TEXT))
    with pytest.raises(DataValidationError) as info:
        encode_sft(record, tokenizer, max_length=prompt_length)
    assert str(info.value) == (
        f"train.jsonl:4: field 'prompt': prompt is {prompt_length} tokens, leaving no room for "
        f"the completion within max_length={prompt_length}; set max_prompt_tokens when loading "
        f"the data")


def test_template_whose_prompt_is_not_a_prefix_is_refused():
    # Renders a finished assistant turn as "bot" but the generation prompt as "assistant".
    odd = tiny_tokenizer()
    odd.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + ('bot' if m['role'] == 'assistant' "
        "else m['role']) + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    record = SFTRecord(prompt="hi", completion="yo", location=Location("d.jsonl", 2))
    prompt_ids = ids(odd, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    full_ids = ids(odd, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>bot\nyo<|im_end|>\n")
    differ = next(i for i, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b)
    with pytest.raises(DataValidationError) as info:
        encode_sft(record, odd, max_length=64)
    assert str(info.value) == (
        f"d.jsonl:2: field 'completion': the chat template renders the prompt differently alone "
        f"than inside the conversation (token ids differ at position {differ}), so prompt and "
        f"completion tokens cannot be told apart; use a template whose prompt render is a "
        f"prefix of the full render")


def test_template_without_end_token_gets_eos():
    bare = tiny_tokenizer()
    bare.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}"
                          "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    example = encode_sft(SFTRecord(prompt="hi", completion="yo"), bare, max_length=64)
    assert labeled_spans(bare, example) == ["yo\n<|im_end|>"]


def test_preference_ids_share_the_prompt_and_end_the_turn(tokenizer):
    record = PreferenceRecord(prompt="What is 12 plus 7?", chosen="19", rejected="21")
    encoded = encode_preference(record, tokenizer, max_length=64)
    assert encoded == {"prompt_ids": ids(tokenizer, PROMPT_TEXT),
                       "chosen_ids": ids(tokenizer, "19<|im_end|>"),
                       "rejected_ids": ids(tokenizer, "21<|im_end|>")}
    assert encoded["prompt_ids"] == encode_prompt(record.prompt, tokenizer)


def test_conversational_preference_matches_plain_text(tokenizer):
    plain = PreferenceRecord(prompt="What is 12 plus 7?", chosen="19", rejected="21")
    chat = PreferenceRecord(prompt=[{"role": "user", "content": "What is 12 plus 7?"}],
                            chosen=[{"role": "assistant", "content": "19"}],
                            rejected=[{"role": "assistant", "content": "21"}])
    assert encode_preference(chat, tokenizer, 64) == encode_preference(plain, tokenizer, 64)


def test_preference_truncates_completions_from_the_right(tokenizer):
    record = PreferenceRecord(prompt="What is 12 plus 7?", chosen="The answer is 19.",
                              rejected="I can't help with that.")
    full = encode_preference(record, tokenizer, max_length=256)
    room = 3
    cut = encode_preference(record, tokenizer, max_length=len(full["prompt_ids"]) + room)
    assert cut == {"prompt_ids": full["prompt_ids"], "chosen_ids": full["chosen_ids"][:room],
                   "rejected_ids": full["rejected_ids"][:room]}


def test_chat_record_needs_a_chat_template():
    plain = tiny_tokenizer()
    plain.chat_template = None
    with pytest.raises(ConfigError, match="chat records need a tokenizer with a chat template"):
        encode_prompt([{"role": "user", "content": "hi"}], plain)


def test_text_rows_are_learned_on_every_token_and_end_with_eos(tokenizer):
    text = "The sky is blue. Grass is green."
    example = encode_sft(SFTRecord(text=text), tokenizer, max_length=64)
    assert example["input_ids"] == ids(tokenizer, text) + [tokenizer.eos_token_id]
    assert example["labels"] == example["input_ids"]  # no prompt: nothing masked
    short = encode_sft(SFTRecord(text=text), tokenizer, max_length=5)
    assert short["input_ids"] == ids(tokenizer, text)[:5] == short["labels"]
