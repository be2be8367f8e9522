"""What every audit metric is given and what it returns.

A metric module exposes ``evaluate(model: AuditModel, *, limit: int | None = None) -> list[MetricResult]``
(or, for metrics that compare two models such as drift,
``evaluate_pair(baseline: AuditModel, candidate: AuditModel, *, limit=None) -> list[MetricResult]``).
The suite runner calls it on the baseline and on the candidate, bootstraps a 95% interval for each
result by resampling ``items`` and recomputing ``statistic``, and reports candidate - baseline.

``items`` are the per-probe rows (one dict per prompt, pair, or question) that the number is
made from, so the interval resamples probes, not tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.data.records import Prompt
from tether.models.modes import evaluation_mode  # noqa: F401  (metric modules import it from here)
from tether.rollout.generate import DEFAULT_BATCH_SIZE, generate_responses


def mean_of(key: str) -> Callable[[Sequence[dict]], float]:
    """The statistic "mean of ``row[key]`` over the items" (the usual one: a rate or a mean score)."""

    def statistic(rows: Sequence[dict]) -> float:
        return sum(float(row[key]) for row in rows) / max(len(rows), 1)

    statistic.__name__ = f"mean_{key}"
    return statistic


@dataclass
class MetricResult:
    """One number an audit reports, with the rows it came from.

    ``name`` is the key used in reports and gates (``over_refusal``, ``toxicity_prob``); ``unit`` is
    ``"rate"`` (a fraction in [0, 1], shown and gated in percentage points) or ``"score"``.
    ``higher_is_better`` tells the report which direction is a regression (None: neither).
    """

    name: str
    value: float
    items: list[dict]
    statistic: Callable[[Sequence[dict]], float]
    unit: str = "rate"
    higher_is_better: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)  # per-category numbers, samples


def with_judge(evaluate: Callable, judge) -> dict[str, Any]:
    """``{"judge": judge}`` when ``evaluate`` takes a ``judge`` argument and one is set, else ``{}``:
    the keyword arguments that hand a chosen refusal judge to the metrics that count refusals."""
    import inspect

    if judge is None:
        return {}
    return {"judge": judge} if "judge" in inspect.signature(evaluate).parameters else {}


@dataclass
class AuditModel:
    """A model under audit and the ways metrics ask it things. ``path`` is where it was loaded
    from (a checkpoint or adapter directory, or ``tether:default``)."""

    name: str
    model: Any  # a transformers causal LM, in eval mode
    tokenizer: Any
    path: str = ""
    batch_size: int = DEFAULT_BATCH_SIZE  # prompts per generation batch
    progress: bool = True  # False: no progress bars (a trainer's hook with train.progress off)
    # The engine that generates (tether.rollout.backends.make_sampler: vLLM with --backend vllm);
    # None: tether's own decode loop on ``model``. Metrics that read activations use ``model``.
    sampler: Any = None

    def rollout_sampler(self) -> Any:
        """The sampler that generates this model's answers."""
        if self.sampler is None:
            from tether.rollout.sampler import TransformersSampler

            self.sampler = TransformersSampler(self.model, self.tokenizer)
        return self.sampler

    def answer(self, prompts: Sequence[Prompt], *, max_new_tokens: int = 64,
               progress: bool = True, description: str = "generate") -> list[str]:
        """One greedy answer per prompt, in input order."""
        return generate_responses(self.model, self.tokenizer, list(prompts),
                                  max_new_tokens=max_new_tokens, batch_size=self.batch_size,
                                  progress=progress and self.progress, description=description,
                                  sampler=self.sampler)

    def sample(self, prompts: Sequence[Prompt], *, num_samples: int, max_new_tokens: int = 64,
               temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> list[list[str]]:
        """``num_samples`` sampled answers per prompt (seeded), grouped per prompt."""
        from tether.rollout.sampler import RolloutConfig

        sampler = self.rollout_sampler()
        config = RolloutConfig(num_samples=num_samples, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, seed=seed)
        groups: list[list[str]] = []
        per_batch = max(1, self.batch_size // num_samples)
        for start in range(0, len(prompts), per_batch):
            texts = sampler.sample(list(prompts[start:start + per_batch]), config).texts
            for offset in range(0, len(texts), num_samples):
                groups.append([text.strip() for text in texts[offset:offset + num_samples]])
        return groups


