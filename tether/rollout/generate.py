"""One answer per prompt, for evaluations and demos, through the rollout sampler."""

from __future__ import annotations

import math

from tether.data.records import Prompt
from tether.engine.progress import progress_bar
from tether.models import evaluation_mode
from tether.rollout.sampler import RolloutConfig, Sampler, TransformersSampler

# Decoding reads every weight once per new token whatever the number of rows, so on a CPU 48 rows
# cost little more per token than 16 (benchmarks/RESULTS.md, "Measurements behind design choices").
# Prefill keeps only the last position's logits, so memory stays small.
DEFAULT_BATCH_SIZE = 48


def generate_responses(model, tokenizer, prompts: list[Prompt], *, max_new_tokens: int = 64,
                       batch_size: int = DEFAULT_BATCH_SIZE, temperature: float = 0.0, seed: int = 0,
                       progress: bool = True, description: str = "generate",
                       sampler: Sampler | None = None) -> list[str]:
    """One response per prompt, in input order; greedy when ``temperature == 0``. ``sampler``: an
    engine already built on ``model`` (``make_sampler``: vLLM); default tether's own decode loop.

    Prompts are sorted by length so each batch pads little, and split into batches of equal size
    (49 prompts at most 48 per batch: 25 + 24, not 48 + 1, since a batch costs its longest decode).
    """
    sampler = sampler or TransformersSampler(model, tokenizer)
    config = RolloutConfig(num_samples=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    order = sorted(range(len(prompts)), key=lambda i: len(str(prompts[i])))
    responses: list[str] = [""] * len(prompts)
    with evaluation_mode(model):
        with progress_bar(description, len(prompts), enabled=progress) as bar:
            batches = max(1, math.ceil(len(order) / batch_size))
            size = max(1, math.ceil(len(order) / batches))  # no prompts: no batch, and range() needs a step
            for start in range(0, len(order), size):
                rows = order[start:start + size]
                texts = sampler.sample([prompts[i] for i in rows], config).texts
                for index, text in zip(rows, texts):
                    responses[index] = text.strip()
                bar.advance(len(rows))
    return responses
