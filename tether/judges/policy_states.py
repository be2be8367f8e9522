"""What SmolLM2 itself makes of a (prompt, response) pair: its hidden states, as judge features.

The model that writes the refusals also reads them: run the base SmolLM2-135M-Instruct over the
chat-rendered conversation (user: prompt, assistant: response) and keep, at a few layers, the mean
of the hidden states over the response's tokens and the state at its last token (where the model
has read the prompt and the whole answer). A judge fits a linear head on these
(``tether/judges/refusal_states.py``). The base model is used, not a trained checkpoint, so the
features do not change when the policy trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# Responses are cut at 96 new tokens in the labeled set; 160 leaves room for a long audit answer.
MAX_RESPONSE_TOKENS = 160
BATCH_SIZE = 16


@lru_cache(maxsize=1)
def load_reader():
    """The base model and tokenizer, loaded once per process, in eval mode."""
    from tether.models import load_model

    model, tokenizer = load_model("default")
    return model, tokenizer


def pair_token_ids(prompt: str, response: str, tokenizer) -> tuple[list[int], int]:
    """The conversation's ids and where the response starts (the prompt rendered with the
    generation prompt is a prefix of the whole, as tether.data.tokenize checks for training)."""
    from tether.data.tokenize import encode_prompt

    head = encode_prompt(prompt, tokenizer)
    answer = tokenizer(response or " ", add_special_tokens=False)["input_ids"][:MAX_RESPONSE_TOKENS]
    return head + answer, len(head)


def state_features(prompts: Sequence[str], responses: Sequence[str], layers: Sequence[int],
                   reader=None) -> np.ndarray:
    """Per pair and per layer in ``layers``: the mean hidden state over the response's tokens, then
    the state at its last token. Shape: (N,) pairs -> (N, len(layers) * 2 * hidden)."""
    import torch

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    model, tokenizer = reader or load_reader()
    encoded = [pair_token_ids(p, r, tokenizer) for p, r in zip(prompts, responses)]
    rows: list[np.ndarray | None] = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # batches of similar length
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), BATCH_SIZE):
        batch = order[start:start + BATCH_SIZE]
        width = max(len(encoded[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T), right-padded
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            tokens = encoded[i][0]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for row, i in enumerate(batch):
            tokens, begin = encoded[i]
            parts = []
            for layer in layers:
                states = hidden[layer][row, begin:len(tokens)]  # (response tokens, H)
                parts += [states.mean(0), states[-1]]
            rows[i] = torch.cat(parts).float().numpy()
    width = len(layers) * 2 * model.config.hidden_size
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, width), np.float32)
