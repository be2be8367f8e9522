"""Multiple choice by likelihood: which of a few given answers does a model find most probable?

Reading a small model's free text for its choice is brittle (it may restate the question, name two
options, or drift); comparing the probabilities it gives each option is not. For prompt x and
option y = (y_1 .. y_n), rendered as the assistant's reply with the chat template,

    score(y | x) = (1/n) sum_t log p(y_t | x, y_<t)        (average=True, the default)
                 =       sum_t log p(y_t | x, y_<t)        (average=False)

and the choice is the argmax over options. The reply includes the end-of-turn token, so an option
scores as a complete answer, not as the start of a longer one. Options differ in length ("The
grandfather" vs "Not enough information"), and a summed log-probability favours the shortest, so
the per-token mean is the default (lm-eval's ``acc_norm`` normalises by characters for the same
reason).

A model that scores options itself (an API model, or a scripted stand-in in tests) defines a method
``option_logprobs(prompts, options) -> list[list[float]]`` on its ``AuditModel``; it is used instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tether.audit.base import AuditModel, evaluation_mode
from tether.data import SFTRecord, encode_sft, pad_batch
from tether.data.records import Prompt
from tether.losses.logprobs import completion_logps, shared_prompt_token_logps


def _encode(prompt: Prompt, option: str, tokenizer, max_length: int) -> dict:
    if isinstance(prompt, str):
        record = SFTRecord(prompt=prompt, completion=option)
    else:
        record = SFTRecord(messages=[*prompt, {"role": "assistant", "content": option}])
    return encode_sft(record, tokenizer, max_length)


def _shared_prefix(encoded: Sequence[dict]) -> int:
    """Tokens every option's encoding shares before its first completion token (at least 1).

    The chat template renders the prompt identically before each reply, so this is normally the
    whole prompt; taking the common prefix, not trusting the template, keeps the scores exact
    for any tokenizer (one that merges across the prompt/reply boundary shares less).
    """
    first = min(next(t for t, label in enumerate(e["labels"]) if label != -100) for e in encoded)
    length = 0
    rows = [e["input_ids"] for e in encoded]
    while length < first and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length


@torch.no_grad()
def option_logprobs(model: AuditModel, prompts: Sequence[Prompt], options: Sequence[Sequence[str]], *,
                    average: bool = True, max_length: int = 1024) -> list[list[float]]:
    """Log-probability of each option as the reply to its prompt (see the module docstring).

    The options of one prompt share it, so the prompt is run once: a forward over the shared
    prefix x_<L (one row per prompt) fills a KV cache, the cache is copied to each option's row,
    and a second forward runs only the option tokens y_L.. on top of it. The logits predicting
    y_t come from position t-1: the prefix's last position for t = L, the option forward for
    t > L. Same numbers as one forward per prompt+option (:func:`option_logprobs_simple`), up to
    float rounding, for roughly 1/K of the cost when the prompt dominates.

    Shape: prompts (P,), options (P, K_p) -> (P, K_p) floats, K_p may vary per prompt.
    """
    custom = getattr(model, "option_logprobs", None)
    if callable(custom):
        return [list(map(float, row)) for row in custom(list(prompts), [list(o) for o in options])]
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    # groups: (prompt index, shared prefix ids, [(option index, suffix ids, suffix completion mask)])
    groups = []
    for p, (prompt, choices) in enumerate(zip(prompts, options)):
        encoded = [_encode(prompt, option, model.tokenizer, max_length) for option in choices]
        if not encoded:
            continue
        shared = _shared_prefix(encoded)
        if shared == 0:  # nothing shared (no prompt tokens): score each option on its own prefix
            units = [[(k, e)] for k, e in enumerate(encoded)]
        else:
            units = [list(enumerate(encoded))]
        for unit in units:
            length = shared or next(t for t, label in enumerate(unit[0][1]["labels"]) if label != -100)
            groups.append((p, unit[0][1]["input_ids"][:length],
                           [(k, e["input_ids"][length:], [int(label != -100) for label in e["labels"][length:]])
                            for k, e in unit]))
    groups.sort(key=lambda group: len(group[1]))  # similar prefix lengths together: little padding
    scores = [[0.0] * len(choices) for choices in options]
    network = model.model
    with evaluation_mode(network) as device:
        for start in range(0, len(groups), model.batch_size):
            chunk = groups[start:start + model.batch_size]
            for (p, _, rows), values in zip(chunk, _score_chunk(network, chunk, model.tokenizer.pad_token_id,
                                                                device, average)):
                for (k, _, _), value in zip(rows, values):
                    scores[p][k] = value
    return scores


def _score_chunk(network, chunk: Sequence[tuple], pad_id: int, device, average: bool) -> list[list[float]]:
    """Scores of every option in ``chunk``'s groups: one prefix forward, one option forward."""
    width = max(len(prefix) for _, prefix, _ in chunk)
    # Left padding puts every prefix's last token in the last column, so the forward needs the
    # lm_head there only; position ids count real tokens, so padding does not shift positions.
    prefix_ids = torch.tensor([[pad_id] * (width - len(prefix)) + prefix for _, prefix, _ in chunk],
                              device=device)  # (G, S)
    prefix_mask = torch.tensor([[0] * (width - len(prefix)) + [1] * len(prefix) for _, prefix, _ in chunk],
                               device=device)  # (G, S)
    owner = torch.tensor([g for g, (_, _, rows) in enumerate(chunk) for _ in rows], device=device)  # (R,)
    suffixes = pad_batch([{"input_ids": ids, "labels": mask} for _, _, rows in chunk for _, ids, mask in rows],
                         pad_id)
    suffix_ids, suffix_mask = suffixes["input_ids"].to(device), suffixes["attention_mask"].to(device)  # (R, U)
    # "labels" carry the 0/1 completion mask here; pad_batch pads them with -100, clamped to 0
    completion = suffixes["labels"].to(device).clamp(min=0).float()  # (R, U): 1 on option tokens
    logps = shared_prompt_token_logps(network, prefix_ids, prefix_mask, owner, suffix_ids, suffix_mask) * completion
    totals = logps.sum(dim=1)  # (R,)
    if average:
        totals = totals / completion.sum(dim=1).clamp(min=1.0)
    values = totals.tolist()
    out, offset = [], 0
    for _, _, rows in chunk:
        out.append(values[offset:offset + len(rows)])
        offset += len(rows)
    return out


@torch.no_grad()
def option_logprobs_simple(model: AuditModel, prompts: Sequence[Prompt], options: Sequence[Sequence[str]], *,
                           average: bool = True, max_length: int = 1024) -> list[list[float]]:
    """:func:`option_logprobs` the plain way, one forward over each prompt+option: the reference
    the shared-prefix version is tested against."""
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    rows = [(p, k, _encode(prompt, option, model.tokenizer, max_length))
            for p, (prompt, choices) in enumerate(zip(prompts, options))
            for k, option in enumerate(choices)]
    rows.sort(key=lambda row: len(row[2]["input_ids"]))  # similar lengths together: little padding
    scores = [[0.0] * len(choices) for choices in options]
    network = model.model
    with evaluation_mode(network) as device:
        for start in range(0, len(rows), model.batch_size):
            chunk = rows[start:start + model.batch_size]
            batch = {k: v.to(device) for k, v in
                     pad_batch([encoded for _, _, encoded in chunk], model.tokenizer.pad_token_id).items()}
            completion_mask = (batch["labels"] != -100).long()  # (B, T)
            logps = completion_logps(network, batch["input_ids"], batch["attention_mask"],
                                     completion_mask, average=average)  # (B,)
            for (p, k, _), value in zip(chunk, logps.tolist()):
                scores[p][k] = value
    return scores


def choose(model: AuditModel, prompts: Sequence[Prompt], options: Sequence[Sequence[str]], *,
           average: bool = True) -> list[int]:
    """Index of the most probable option per prompt (the first one on a tie)."""
    scores = option_logprobs(model, prompts, options, average=average)
    return [max(range(len(row)), key=row.__getitem__) for row in scores]
