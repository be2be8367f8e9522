"""Atomic checkpoints with exact resume.

A checkpoint is a folder ``checkpoint-STEP`` holding
  model.safetensors   trainable parameters only (LoRA runs save just the adapters)
  trainer.pt          optimizer, scheduler and RNG states (tensors and plain containers only,
                      loaded with ``weights_only=True``: no arbitrary pickle)
  state.json          the step reached, and anything else the trainer needs (data position)
It is written under a temporary name and renamed when complete, so a run killed mid-save
leaves the previous checkpoint intact and never a half-written one under a real name.

Under torchrun every rank calls ``save_checkpoint`` (FSDP shards are gathered, a collective)
and rank 0 alone writes, in the single-process format with rank 0's RNG state; every rank
``load_checkpoint``s the same files (so the folder must be on a filesystem all nodes share).
A run saved by W processes resumes under any number of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tether.engine import distributed
from tether.engine.determinism import capture_rng_state, restore_rng_state
from tether.errors import CheckpointError

_NAME = re.compile(r"^checkpoint-(\d+)$")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, whole (FSDP shards gathered: every rank must call this)."""
    whole = distributed.full_tensor if distributed.world().enabled else torch.Tensor.detach
    return {name: whole(param).contiguous() for name, param in model.named_parameters()
            if param.requires_grad}


def save_trainable_state(model: torch.nn.Module, path: str | Path) -> None:
    """Write the trainable parameters alone (no optimizer state) to one safetensors file, atomically.
    Every rank calls it (FSDP gathers); rank 0 writes."""
    weights = trainable_state(model)
    if distributed.is_main():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file(weights, str(tmp))
        os.replace(tmp, path)
    distributed.barrier()


def load_trainable_state(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the weights in a safetensors file written from this model's trainable parameters
    (a checkpoint's, or ``save_trainable_state``'s) into the model."""
    weights = load_file(str(path))
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:3]
        unexpected = sorted(set(weights) - expected)[:3]
        raise CheckpointError(f"{path} does not match this model's trainable parameters "
                              f"(missing e.g. {missing}, unexpected e.g. {unexpected}); was it "
                              "saved by a run with another model or LoRA setting?")
    copy_weights(model, weights)


def copy_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into the module's parameters of the same names, each placed as its parameter
    is (an FSDP shard, or on the parameter's device)."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(distributed.shard_like(tensor, params[name]))


def save_checkpoint(directory: str | Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, *, keep_last: int = 2,
                    extra_state: dict | None = None) -> Path:
    directory = Path(directory)
    final = directory / f"checkpoint-{step:07d}"
    weights = trainable_state(model)
    optimizer_state = distributed.full_optimizer_state(optimizer)
    if not distributed.is_main():
        distributed.barrier()  # rank 0 writes; return once the checkpoint exists
        return final
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".checkpoint-{step:07d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                "rng": capture_rng_state()}, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **(extra_state or {})}, indent=2))
    _fsync_tree(tmp)
    if final.exists():  # the same step saved again (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def remove_partial_checkpoints(directory: str | Path) -> None:
    """Temp folders left by a run killed mid-save."""
    directory = Path(directory)
    if directory.is_dir():
        for path in directory.glob(".checkpoint-*.tmp-*"):
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG; return ``state.json``'s contents."""
    path = Path(path)
    for name in ("model.safetensors", "trainer.pt", "state.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    load_trainable_state(model, path / "model.safetensors")
    trainer = torch.load(path / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(distributed.shard_optimizer_state(trainer["optimizer"], optimizer)
                              if distributed.world().enabled else trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    restore_rng_state(trainer["rng"])
    return json.loads((path / "state.json").read_text())


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
