"""Set-up steps every trainer shares: the policy model and the per-epoch batch schedule."""

from __future__ import annotations

from typing import Callable

import torch

from tether.config import DataSettings, ModelSettings
from tether.data import length_bucketed_batches, packed_batches
from tether.engine.progress import console
from tether.models import apply_lora, load_model


def load_policy(settings: ModelSettings):
    """The model to train (LoRA-wrapped when configured) and its tokenizer."""
    model, tokenizer = load_model(settings.path)
    if settings.lora is not None:
        lora = settings.lora
        model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                           target_modules=lora.target_modules)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    console.print(f"model {settings.path}: {total / 1e6:.1f}M parameters, "
                  f"{trainable / 1e6:.2f}M trainable")
    return model, tokenizer


def epoch_schedule(lengths: list[int], data: DataSettings,
                   batch_size: int) -> Callable[[int], list[list[int]]]:
    """``seed -> micro-batches of example indices`` for one epoch, by the configured batching."""
    if data.batching == "pack":
        return lambda seed: packed_batches(lengths, batch_size, seed)
    return lambda seed: length_bucketed_batches(lengths, batch_size, seed)
