"""Set-up steps every trainer shares: the policy model and the per-epoch batch schedule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tether.config import DataSettings, ModelSettings
from tether.data import length_bucketed_batches, packed_batches, shuffled_batches
from tether.engine import distributed
from tether.engine.progress import console
from tether.models import apply_lora, load_model, merge_lora
from tether.models.loading import is_adapter_dir

MERGED_BASE_DIR = "merged_base"  # in the run folder: an earlier adapter folded into its base


def load_policy(settings: ModelSettings, run_dir: Path):
    """The model to train (LoRA-wrapped when configured) and its tokenizer.

    When ``settings.path`` is a LoRA adapter and ``settings.lora`` is set, adapters are never
    stacked inside adapters (peft would save doubled key prefixes that reload as the untouched
    base): "merge" folds the adapter into its base, saves that as ``run_dir/merged_base`` (the
    base ``final/`` names) and adds fresh adapters; "continue" trains the loaded adapter.
    """
    model, tokenizer = load_model(settings.path)
    if settings.lora is not None and _is_peft(model):
        if settings.lora_on_adapter == "continue":
            console.print(f"model {settings.path} is a LoRA adapter: training it further "
                          "(model.lora_on_adapter=continue; its own r, alpha and target modules)")
        else:
            model = _merge_into_saved_base(model, tokenizer, run_dir / MERGED_BASE_DIR)
            console.print(f"model {settings.path} is a LoRA adapter: merged into its base, saved "
                          f"as {run_dir / MERGED_BASE_DIR}; fresh adapters train on top")
    if settings.lora is not None and not _is_peft(model):
        lora = settings.lora
        model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                           target_modules=lora.target_modules)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    console.print(f"model {settings.path}: {total / 1e6:.1f}M parameters, "
                  f"{trainable / 1e6:.2f}M trainable")
    return model, tokenizer


def adapters_off_is_reference(settings: ModelSettings) -> bool:
    """True when the policy with its adapters disabled is the starting model, so RL trainers use
    it as the frozen reference instead of loading a copy: fresh LoRA adapters, not an adapter
    trained further (``continue``), whose adapter-off model is the older base."""
    if settings.lora is None:
        return False
    return not (settings.lora_on_adapter == "continue" and is_adapter_dir(settings.path))


def _merge_into_saved_base(model, tokenizer, directory: Path):
    merged = merge_lora(model)
    distributed.save_final_model(merged, tokenizer, directory)  # rank 0 writes, all ranks wait
    # Saved adapters name their base by this path (peft reads the attribute at wrapping time).
    merged.name_or_path = str(directory.expanduser().resolve())
    return merged


def _is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def epoch_schedule(lengths: list[int], data: DataSettings,
                   batch_size: int) -> Callable[[int], list[list[int]]]:
    """``seed -> micro-batches of example indices`` for one epoch, by the configured batching."""
    if data.batching == "pack":
        return lambda seed: packed_batches(lengths, batch_size, seed)
    if data.batching == "shuffle":
        return lambda seed: shuffled_batches(len(lengths), batch_size, seed)
    return lambda seed: length_bucketed_batches(lengths, batch_size, seed)
