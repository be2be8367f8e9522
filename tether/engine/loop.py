"""The shared step loop every supervised-style trainer (SFT, DPO, reward model) runs.

A trainer hands over its model, a batch plan, a ``collate`` that turns example indices into a
micro-batch, and a ``compute_loss(model, batch) -> (loss, metrics)``. The loop does the rest:
gradient accumulation weighted by each micro-batch's ``num_items`` (tokens or pairs, so the
accumulated gradient equals the big-batch gradient), optional bf16 autocast, clipping,
scheduler, NaN/inf guard, metrics, progress, checkpoints and exact resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tether.config import RunConfig
from tether.engine.batches import BatchPlan
from tether.engine.checkpoint import (latest_checkpoint, load_checkpoint,
                                      remove_partial_checkpoints, save_checkpoint)
from tether.engine.metrics import MetricsLogger
from tether.engine.optim import build_optimizer, build_scheduler
from tether.engine.progress import console, progress_bar
from tether.errors import CheckpointError, TrainingDivergedError

Batch = dict[str, Any]
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class FitResult:
    steps: int
    resumed_from: int | None
    history: list[dict] = field(default_factory=list)


def fit(model: torch.nn.Module, plan: BatchPlan, collate: Callable[[list[int]], Batch],
        compute_loss: LossFn, config: RunConfig, *,
        evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        eval_every: int | None = None) -> FitResult:
    train = config.train
    run_dir = config.run_dir()
    checkpoint_dir = run_dir / "checkpoints"
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, plan.total_steps)

    start_step, resumed_from = 0, None
    if train.resume:
        remove_partial_checkpoints(checkpoint_dir)
        last = latest_checkpoint(checkpoint_dir)
        if last is None:
            raise CheckpointError(f"--resume: no checkpoint in {checkpoint_dir}")
        state = load_checkpoint(last, model, optimizer, scheduler)
        if state.get("total_steps", plan.total_steps) != plan.total_steps:
            raise CheckpointError(f"{last} was saved by a run of {state['total_steps']} steps; "
                                  f"this config plans {plan.total_steps}. Resume with the same config.")
        start_step = resumed_from = state["step"]
        console.print(f"resuming from {last} (step {start_step}/{plan.total_steps})")
    metrics_log = MetricsLogger(run_dir, tensorboard=train.tensorboard, resume_step=resumed_from)

    def checkpoint(step: int) -> Path:
        return save_checkpoint(checkpoint_dir, step, model, optimizer, scheduler,
                               keep_last=train.keep_last,
                               extra_state={"total_steps": plan.total_steps})

    result = FitResult(steps=plan.total_steps, resumed_from=resumed_from)
    model.train()
    window_start, window_items = time.perf_counter(), 0
    with progress_bar(f"train {train.run_name}", plan.total_steps, completed=start_step,
                      enabled=train.progress) as bar:
        for step in range(start_step, plan.total_steps):
            batches = [collate(indices) for indices in plan.micro_batches(step)]
            total_items = sum(batch["num_items"] for batch in batches)
            step_metrics: dict[str, float] = {}
            for batch in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=train.bf16):
                    loss, metrics = compute_loss(model, batch)
                if not torch.isfinite(loss):
                    _diverged(f"loss is {loss.item()} at step {step + 1}", checkpoint_dir)
                share = batch["num_items"] / total_items
                (loss * share).backward()
                for key, value in {"loss": loss.item(), **metrics}.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + value * share
            grad_norm = _clip(model, config.optim.max_grad_norm)
            if not torch.isfinite(grad_norm):
                _diverged(f"gradient norm is {grad_norm.item()} at step {step + 1}", checkpoint_dir)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            last_step = done == plan.total_steps
            window_items += total_items
            wants_eval = evaluate is not None and (last_step or bool(eval_every and done % eval_every == 0))
            if wants_eval or last_step or done % train.log_every == 0:
                elapsed = time.perf_counter() - window_start
                step_metrics.update(grad_norm=grad_norm.item(), lr=scheduler.get_last_lr()[0],
                                    epoch=plan.epoch_of(done), items_per_s=window_items / elapsed)
                window_start, window_items = time.perf_counter(), 0
                if wants_eval:
                    step_metrics.update(_run_eval(model, evaluate))
                metrics_log.log(done, step_metrics)
                result.history.append({"step": done, **step_metrics})
            bar.advance(1, status=f"loss {step_metrics['loss']:.4f}")
            if last_step or (train.save_every and done % train.save_every == 0):
                checkpoint(done)
    metrics_log.close()
    return result


def _clip(model: torch.nn.Module, max_norm: float | None) -> torch.Tensor:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _run_eval(model: torch.nn.Module, evaluate) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad():
            return {f"eval/{key}": value for key, value in evaluate(model).items()}
    finally:
        model.train()


def _diverged(what: str, checkpoint_dir: Path) -> None:
    last = latest_checkpoint(checkpoint_dir)
    kept = f"the last good checkpoint is kept at {last}" if last else "no checkpoint was saved yet"
    raise TrainingDivergedError(f"training diverged: {what}; {kept}. Lower optim.lr, enable "
                                "optim.max_grad_norm, or check the data for empty completions.")
