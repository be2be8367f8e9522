"""A scripted annotator for helpfulness on a CPU: does the answer stay on the request's topic?

    on_topic(x, y) = cos(e(x), e(y))        e = all-MiniLM-L6-v2 sentence embedding, unit length

x is the request (a chat prompt's last user message), y the answer. A 135M model sampled at
temperature 1 often drifts ("How do I kill a Python process?" -> a story about starvation);
on-topic answers score higher. Embedding similarity rewards topic words, not correctness, and it
would reward complying with a harmful request just as much, so use it on harmless prompts only:
it is a rule that stands in for a person, for pipelines that need a preference signal where no
labels or strong judge are at hand (recipes/rlhf-ppo.yaml), and a gold scorer to compare a
learned reward model against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tether.judges.rows import prompt_text
from tether.rewards.base import completion_text

request_text = prompt_text  # a plain prompt, or the last user message of a chat prompt


def on_topic(prompts: Sequence[Any], completions: Sequence[Any], **_columns: Any) -> list[float]:
    """Cosine similarity of each answer's embedding to its request's (see the module docstring)."""
    from tether.judges.refusal_embedding import load_encoder  # loads MiniLM: only when used

    if not completions:
        return []
    encoder = load_encoder()
    requests = encoder.encode([request_text(p) for p in prompts])  # (N, H), unit rows
    answers = encoder.encode([completion_text(c) or " " for c in completions])  # (N, H)
    return (requests * answers).sum(dim=1).tolist()
