"""Records to token ids, with the tokenizer's own chat template.

The prompt/completion split is found, not guessed: render the prompt alone with
`add_generation_prompt=True`, render the whole conversation, and require the first to be a prefix
of the second. Everything after the prefix is the completion. A template that renders the prompt
differently inside the conversation (some strip reasoning from earlier turns) fails loudly here
instead of training on misaligned labels.

Plain-text records meet a chat-template tokenizer as one user message and one assistant reply, so
instruct models see their own format. Without a chat template, prompt and completion are tokenized
separately and EOS is appended. Either way a completion ends with the end-of-turn token: that is
what teaches the model to stop.
"""

from __future__ import annotations

from typing import Any

from tether.data.records import Message, PreferenceRecord, Prompt, SFTRecord
from tether.errors import ConfigError, DataValidationError

IGNORE_INDEX = -100  # label value that cross-entropy skips (torch and HF default)

# Tokens that close an assistant turn in common chat formats, besides the tokenizer's EOS:
# ChatML (SmolLM2, Qwen), Llama 3, Gemma, Phi-3.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def has_chat_template(tokenizer: Any) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """Ids that may end an assistant turn: EOS and the known end-of-turn tokens in the vocab."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in _END_OF_TURN_TOKENS if token in vocab)
    return ids


def _render(messages: list[Message], tokenizer: Any, *, add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def _as_messages(prompt: Prompt) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _as_reply(completion: str | list[Message]) -> list[Message]:
    return ([{"role": "assistant", "content": completion}] if isinstance(completion, str)
            else completion)


def _ends_turn(ids: list[int], tokenizer: Any) -> list[int]:
    """Cut after the last end-of-turn token (dropping the template's trailing newline); append
    EOS when the template wrote none."""
    end_ids = end_of_turn_ids(tokenizer)
    for position in range(len(ids) - 1, -1, -1):
        if ids[position] in end_ids:
            return ids[:position + 1]
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token; tether needs one to end completions")
    return ids + [tokenizer.eos_token_id]


def _check_prefix(prefix: list[int], full: list[int], record: Any, field: str) -> None:
    if full[:len(prefix)] == prefix:
        return
    at = next((i for i, (a, b) in enumerate(zip(prefix, full, strict=False)) if a != b), len(full))
    location = record.location
    raise DataValidationError(
        f"the chat template renders the prompt differently alone than inside the conversation "
        f"(token ids differ at position {at}), so prompt and completion tokens cannot be told "
        f"apart; use a template whose prompt render is a prefix of the full render",
        file=location.file if location else None, line=location.line if location else None,
        field=field)


def encode_prompt(prompt: Prompt, tokenizer: Any) -> list[int]:
    """The ids a model is given before it answers: the prompt with the generation prompt added
    (chat template), or the plain tokenization of a string without one."""
    if has_chat_template(tokenizer):
        return _render(_as_messages(prompt), tokenizer, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise ConfigError("chat records need a tokenizer with a chat template; this one has none")
    return list(tokenizer(prompt)["input_ids"])


def _prompt_and_completion(prompt: Prompt, completion: str | list[Message], tokenizer: Any,
                           record: Any, field: str) -> tuple[list[int], list[int]]:
    prompt_ids = encode_prompt(prompt, tokenizer)
    if not has_chat_template(tokenizer):
        completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        return prompt_ids, _ends_turn(completion_ids, tokenizer)
    full = _render(_as_messages(prompt) + _as_reply(completion), tokenizer,
                   add_generation_prompt=False)
    _check_prefix(prompt_ids, full, record, field)
    return prompt_ids, _ends_turn(full[len(prompt_ids):], tokenizer)


def _too_long(record: Any, field: str, prompt_tokens: int, max_length: int) -> DataValidationError:
    location = record.location
    return DataValidationError(
        f"prompt is {prompt_tokens} tokens, leaving no room for the completion within "
        f"max_length={max_length}; set max_prompt_tokens when loading the data",
        file=location.file if location else None, line=location.line if location else None,
        field=field)


def _encode_chat_sft(messages: list[Message], tokenizer: Any, record: SFTRecord
                     ) -> tuple[list[int], list[int]]:
    """Labels on assistant turns only: turn i spans from the end of `messages[:i]` rendered with
    the generation prompt to the end of `messages[:i+1]`, each checked as a prefix of the whole."""
    if not has_chat_template(tokenizer):
        raise ConfigError("chat records need a tokenizer with a chat template; this one has none")
    input_ids = _render(messages, tokenizer, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(input_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_ids = _render(messages[:i], tokenizer, add_generation_prompt=True)
        through_ids = _render(messages[:i + 1], tokenizer, add_generation_prompt=False)
        _check_prefix(start_ids, input_ids, record, "messages")
        _check_prefix(through_ids, input_ids, record, "messages")
        turn = _ends_turn(through_ids[len(start_ids):], tokenizer)
        if i == len(messages) - 1:  # nothing follows: the sequence ends where the turn ends
            input_ids = start_ids + turn
            labels = labels[:len(start_ids)] + turn
        else:  # the template's text between turns stays in the sequence, unlearned
            turn = turn[:len(through_ids) - len(start_ids)]
            labels[len(start_ids):len(start_ids) + len(turn)] = turn
    return input_ids, labels


def encode_sft(record: SFTRecord, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels for supervised fine-tuning.

    `labels` equal `input_ids` on completion (assistant) tokens and -100 elsewhere, so the loss
    covers only what the model should learn to write (HF shifts labels inside the model). A
    `text` record is learned whole: labels equal input_ids, with EOS appended (as TRL does).
    Sequences longer than `max_length` are truncated from the right, which cuts the completion;
    a prompt that leaves no completion token inside `max_length` is an error.

    Shape: input_ids (T,), labels (T,), T <= max_length.
    """
    if record.text is not None:  # language modelling: every token is learned, EOS ends the text
        input_ids = list(tokenizer(record.text)["input_ids"])
        if tokenizer.eos_token_id is not None and input_ids[-1:] != [tokenizer.eos_token_id]:
            input_ids.append(tokenizer.eos_token_id)
        return {"input_ids": input_ids[:max_length], "labels": input_ids[:max_length]}
    if record.messages is not None:
        input_ids, labels = _encode_chat_sft(record.messages, tokenizer, record)
        first_label = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        if first_label >= max_length:
            raise _too_long(record, "messages", first_label, max_length)
        return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}
    prompt_ids, completion_ids = _prompt_and_completion(
        record.prompt, record.completion, tokenizer, record, "completion")
    if len(prompt_ids) >= max_length:
        raise _too_long(record, "prompt", len(prompt_ids), max_length)
    input_ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def encode_preference(record: PreferenceRecord, tokenizer: Any, max_length: int
                      ) -> dict[str, list[int]]:
    """Prompt ids and the two completions' ids (each ending with the end-of-turn token).

    When prompt + completion exceeds `max_length`, the completion is truncated from the right;
    the prompt is kept whole (bound it with `max_prompt_tokens` when loading).

    Shape: prompt_ids (P,), chosen_ids (C,), rejected_ids (R,), with P + C, P + R <= max_length.
    """
    prompt_ids, chosen_ids = _prompt_and_completion(
        record.prompt, record.chosen, tokenizer, record, "chosen")
    _, rejected_ids = _prompt_and_completion(
        record.prompt, record.rejected, tokenizer, record, "rejected")
    room = max_length - len(prompt_ids)
    if room <= 0:
        raise _too_long(record, "prompt", len(prompt_ids), max_length)
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids[:room],
            "rejected_ids": rejected_ids[:room]}


def truncate_prompt_left(prompt: Prompt, tokenizer: Any, max_tokens: int) -> Prompt | None:
    """Keep the last tokens of a prompt so that `encode_prompt` gives at most `max_tokens` ids.

    A conversation loses its oldest messages first (the newest is always kept); then the first
    remaining message's content is cut from the left. Cutting happens in content tokens so the
    template's role headers survive. Returns None when even an empty content would not fit.
    """
    if len(encode_prompt(prompt, tokenizer)) <= max_tokens:
        return prompt
    messages = list(prompt) if isinstance(prompt, list) else None
    while messages is not None and len(messages) > 1:
        messages = messages[1:]
        if len(encode_prompt(messages, tokenizer)) <= max_tokens:
            return messages
    content = prompt if messages is None else messages[0]["content"]
    content_ids = list(tokenizer(content, add_special_tokens=False)["input_ids"])

    def rebuild(keep: int) -> Prompt:
        text = tokenizer.decode(content_ids[len(content_ids) - keep:]) if keep else ""
        return text if messages is None else [{**messages[0], "content": text}] + messages[1:]

    excess = len(encode_prompt(prompt if messages is None else messages, tokenizer)) - max_tokens
    # Re-tokenizing the cut text can merge differently at the cut, so step down until it fits.
    for keep in range(max(len(content_ids) - excess, 0), -1, -1):
        candidate = rebuild(keep)
        if len(encode_prompt(candidate, tokenizer)) <= max_tokens:
            return candidate if keep else None
    return None
