"""The step loop every supervised-style trainer (SFT, DPO, reward model) runs.

A trainer hands over its model, a batch plan, a ``collate`` that turns example indices into a
micro-batch, and a ``compute_loss(model, batch) -> (loss, metrics)``. Gradient accumulation is
weighted by each micro-batch's ``num_items`` (tokens or pairs), so the accumulated gradient
equals the big-batch gradient. Everything else (optimizer, NaN guard, metrics, checkpoints,
resume) is the ``TrainingSession``'s.

Under torchrun each rank runs its share of a step's micro-batches (``local_micro_batches``);
weights are ``num_items / N`` with N summed over all ranks, and the metrics, pre-weighted the
same way, are summed over ranks, so every number is the one-process number (engine/distributed.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tether.config import RunConfig
from tether.engine import distributed
from tether.engine.batches import BatchPlan
from tether.engine.progress import progress_bar
from tether.engine.session import TrainingSession, run_eval

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
    session = TrainingSession(model, config, plan.total_steps)
    result = FitResult(steps=plan.total_steps, resumed_from=session.resumed_from)
    model = session.model  # what training forwards go through (DDP / FSDP under torchrun)
    device = session.world.device
    model.train()
    with progress_bar(f"train {config.train.run_name}", plan.total_steps,
                      completed=session.start_step, enabled=config.train.progress) as bar:
        for step in range(session.start_step, plan.total_steps):
            step_start = time.perf_counter()
            batches = [collate(indices) for indices in distributed.local_micro_batches(plan.micro_batches(step))]
            total_items = distributed.all_reduce_sum(sum(batch["num_items"] for batch in batches))
            step_metrics: dict[str, float] = {}
            for index, batch in enumerate(batches):
                batch = distributed.to_device(batch, device)
                with session.autocast(), session.gradient_sync(index == len(batches) - 1):
                    loss, metrics = compute_loss(model, batch)
                share = batch["num_items"] / total_items
                session.backward(loss, step, share)
                for key, value in {"loss": loss.item(), **metrics}.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + value * share
            step_metrics = distributed.sum_metrics(step_metrics)
            step_metrics.update(session.optimizer_step(step, total_items))
            session.throughput.add(batches, time.perf_counter() - step_start)

            done = step + 1
            wants_eval = evaluate is not None and session.eval_due(done, eval_every)
            if wants_eval or session.should_log(done):
                step_metrics["epoch"] = plan.epoch_of(done)
                if wants_eval:
                    step_metrics.update(distributed.on_main(
                        session.module, lambda: run_eval(session.module, evaluate)) or {})
                session.log(done, step_metrics)
                result.history.append({"step": done, **step_metrics})
            bar.advance(1, status=f"loss {step_metrics['loss']:.4f}")
            session.end_step(done)
    session.close()
    return result
