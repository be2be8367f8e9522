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

from tether.audit.base import AuditModel
from tether.data import SFTRecord, encode_sft, pad_batch
from tether.data.records import Prompt
from tether.losses.logprobs import completion_logps


def _encode(prompt: Prompt, option: str, tokenizer, max_length: int) -> dict:
    if isinstance(prompt, str):
        record = SFTRecord(prompt=prompt, completion=option)
    else:
        record = SFTRecord(messages=[*prompt, {"role": "assistant", "content": option}])
    return encode_sft(record, tokenizer, max_length)


@torch.no_grad()
def option_logprobs(model: AuditModel, prompts: Sequence[Prompt], options: Sequence[Sequence[str]], *,
                    average: bool = True, max_length: int = 1024) -> list[list[float]]:
    """Log-probability of each option as the reply to its prompt (see the module docstring).

    Shape: prompts (P,), options (P, K_p) -> (P, K_p) floats, K_p may vary per prompt.
    """
    custom = getattr(model, "option_logprobs", None)
    if callable(custom):
        return [list(map(float, row)) for row in custom(list(prompts), [list(o) for o in options])]
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    rows = [(p, k, _encode(prompt, option, model.tokenizer, max_length))
            for p, (prompt, choices) in enumerate(zip(prompts, options))
            for k, option in enumerate(choices)]
    rows.sort(key=lambda row: len(row[2]["input_ids"]))  # similar lengths together: little padding
    scores = [[0.0] * len(choices) for choices in options]
    network = model.model
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    try:
        for start in range(0, len(rows), model.batch_size):
            chunk = rows[start:start + model.batch_size]
            batch = {k: v.to(device) for k, v in
                     pad_batch([encoded for _, _, encoded in chunk], model.tokenizer.pad_token_id).items()}
            completion_mask = (batch["labels"] != -100).long()  # (B, T)
            logps = completion_logps(network, batch["input_ids"], batch["attention_mask"],
                                     completion_mask, average=average)  # (B,)
            for (p, k, _), value in zip(chunk, logps.tolist()):
                scores[p][k] = value
    finally:
        network.train(was_training)
    return scores


def choose(model: AuditModel, prompts: Sequence[Prompt], options: Sequence[Sequence[str]], *,
           average: bool = True) -> list[int]:
    """Index of the most probable option per prompt (the first one on a tie)."""
    scores = option_logprobs(model, prompts, options, average=average)
    return [max(range(len(row)), key=row.__getitem__) for row in scores]
