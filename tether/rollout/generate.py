"""Batched response generation with Hugging Face ``generate``, for evaluations and demos.

Prompts are rendered with the tokenizer's chat template, left-padded (so every row's next
token sits at the same column), and decoded up to the end-of-turn token.
"""

from __future__ import annotations

import torch

from tether.data import encode_prompt
from tether.data.records import Prompt
from tether.engine.progress import progress_bar


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: list[Prompt], *, max_new_tokens: int = 64,
                       batch_size: int = 16, temperature: float = 0.0, seed: int = 0,
                       progress: bool = True, description: str = "generate") -> list[str]:
    """One response per prompt; greedy when ``temperature == 0``.

    Prompts are sorted by length so each batch pads little; results come back in input order.
    """
    was_training = model.training
    model.eval()
    encoded = [encode_prompt(prompt, tokenizer) for prompt in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    responses: list[str] = [""] * len(prompts)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with progress_bar(description, len(prompts), enabled=progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in rows)
                input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for row, index in enumerate(rows):
                    ids = encoded[index]
                    input_ids[row, width - len(ids):] = torch.tensor(ids)
                    attention_mask[row, width - len(ids):] = 1
                sampling = ({"do_sample": True, "temperature": temperature, "top_p": 1.0}
                            if temperature > 0 else {"do_sample": False})
                output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                        max_new_tokens=max_new_tokens,
                                        pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id, **sampling)
                for row, index in enumerate(rows):
                    responses[index] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
                bar.advance(len(rows))
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return responses
