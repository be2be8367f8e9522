"""One answer per prompt, for evaluations and demos, through the rollout sampler."""

from __future__ import annotations

from tether.data.records import Prompt
from tether.engine.progress import progress_bar
from tether.rollout.sampler import RolloutConfig, TransformersSampler


def generate_responses(model, tokenizer, prompts: list[Prompt], *, max_new_tokens: int = 64,
                       batch_size: int = 16, temperature: float = 0.0, seed: int = 0,
                       progress: bool = True, description: str = "generate") -> list[str]:
    """One response per prompt, in input order; greedy when ``temperature == 0``.

    Prompts are sorted by length so each batch pads little.
    """
    was_training = model.training
    model.eval()
    sampler = TransformersSampler(model, tokenizer)
    config = RolloutConfig(num_samples=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    order = sorted(range(len(prompts)), key=lambda i: len(str(prompts[i])))
    responses: list[str] = [""] * len(prompts)
    try:
        with progress_bar(description, len(prompts), enabled=progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                texts = sampler.sample([prompts[i] for i in rows], config).texts
                for index, text in zip(rows, texts):
                    responses[index] = text.strip()
                bar.advance(len(rows))
    finally:
        model.train(was_training)
    return responses
