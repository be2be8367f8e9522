"""A trained reward model as a reward function: ``scorer(prompts, completions, **columns)``.

    scorer = RewardModelScorer("runs/reward-model/final")
    scorer(["How do I pick a lock?"], ["I can't help with that."])  # -> [r(x, y)]

In a recipe: ``grpo.rewards: [{name: "reward_model:runs/reward-model/final"}]`` (see
``tether.rewards.resolve``). Each (prompt, completion) is rendered exactly as training rendered
a (prompt, response) pair: the chat template with the prompt as the user turn and the completion
as the assistant turn, closed by the end-of-turn token, then scored at its last non-pad token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tether.data import encode_sft, pad_batch
from tether.data.records import SFTRecord
from tether.errors import ConfigError


class RewardModelScorer:
    """Scores completions with a sequence-classification checkpoint (``num_labels=1``).

    ``batch_size`` sequences per forward pass (sorted by length, so batches pad little);
    ``max_length`` tokens per sequence (prompt + completion; the completion is cut from the
    right, as in training); ``bf16`` runs the forward under bfloat16 autocast.
    """

    __name__ = "reward_model"  # reward metrics are keyed by a function's name

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 16, max_length: int = 1024,
                 device: str | torch.device | None = None, bf16: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from tether.models.loading import prepare_tokenizer, resolve_model_path

        directory = resolve_model_path(str(path))
        _require_reward_checkpoint(directory)
        if batch_size <= 0 or max_length <= 8:
            raise ConfigError(f"batch_size must be positive and max_length > 8, got {batch_size}, {max_length}")
        self.path = directory
        self.batch_size, self.max_length, self.bf16 = batch_size, max_length, bf16
        self.tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(directory, local_files_only=True))
        model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True,
                                                                   dtype=torch.float32)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(device or "cpu").eval().requires_grad_(False)

    def encode(self, prompt: Any, completion: Any) -> list[int]:
        """Token ids of one (prompt, completion), rendered as training rendered its pairs."""
        record = SFTRecord(prompt=prompt, completion=completion)
        return encode_sft(record, self.tokenizer, self.max_length)["input_ids"]

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_columns: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        encoded = [self.encode(p, c) for p, c in zip(prompts, completions)]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        scores = [0.0] * len(encoded)
        device = self.model.device
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = pad_batch([{"input_ids": encoded[i]} for i in rows], self.tokenizer.pad_token_id)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(input_ids=batch["input_ids"].to(device),
                                    attention_mask=batch["attention_mask"].to(device),
                                    use_cache=False).logits  # (B, 1)
            for i, value in zip(rows, logits[:, 0].float().tolist()):
                scores[i] = value
        return scores


def _require_reward_checkpoint(directory: Path) -> None:
    config = directory / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        found = ", ".join(architectures) or "no config.json architectures"
        raise ConfigError(f"{directory} is not a reward model ({found}); train one with "
                          "`tether train reward` and pass its final/ folder")
