"""AdamW with decoupled weight decay (none on biases and norms) and warmup + decay schedules.

``optim.optimizer: adamw_8bit`` swaps in bitsandbytes' AdamW8bit (the same update with the two
moments stored blockwise-quantized in 8 bits; tensors under 4096 weights keep 32-bit moments)."""

from __future__ import annotations

import math

import torch

from tether.config import OptimSettings
from tether.errors import ConfigError


def build_optimizer(model: torch.nn.Module, settings: OptimSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        # 1-D tensors are biases and norm scales: decaying them only hurts.
        (no_decay if param.ndim < 2 else decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    adamw = _adamw_8bit() if settings.optimizer == "adamw_8bit" else torch.optim.AdamW
    return adamw([g for g in groups if g["params"]], lr=settings.lr, betas=settings.betas, eps=settings.eps)


def _adamw_8bit():
    try:
        from bitsandbytes.optim import AdamW8bit
    except ImportError as error:
        raise ConfigError("optim.optimizer=adamw_8bit needs bitsandbytes: pip install 'tether[bnb]'") from error
    return AdamW8bit


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warmup to 1, then cosine/linear decay to 0 at ``total_steps`` (or constant)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, settings: OptimSettings,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, total_steps=total_steps,
                                   warmup_steps=settings.warmup_steps, schedule=settings.schedule))
