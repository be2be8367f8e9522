"""One training run's machinery, shared by every loop: optimizer and schedule, the NaN guard,
metrics, checkpoints and exact resume.

``fit`` (supervised trainers) and the RL loops (rollout, then several updates) both drive a
``TrainingSession``, so none of them repeats this code.
"""

from __future__ import annotations

import json
import time

import torch

from tether.config import RunConfig
from tether.engine import distributed
from tether.engine.activation_checkpointing import enable_gradient_checkpointing
from tether.engine.checkpoint import latest_checkpoint, load_checkpoint, remove_partial_checkpoints, save_checkpoint
from tether.engine.metrics import MetricsLogger
from tether.engine.optim import build_optimizer, build_scheduler
from tether.engine.progress import console
from tether.engine.throughput import Throughput
from tether.engine.trackers import open_trackers
from tether.errors import CheckpointError, TrainingDivergedError


class TrainingSession:
    def __init__(self, model: torch.nn.Module, config: RunConfig, total_steps: int, *,
                 optimizer_steps: int | None = None):
        """``total_steps`` counts the run's steps (checkpoints, logs); ``optimizer_steps`` sizes the
        learning-rate schedule when a step makes several updates (RL: updates per rollout).

        Under torchrun, ``self.model`` is what training forwards go through (a DDP wrapper, or the
        FSDP2-sharded model) and ``self.module`` the model itself (sampling, saving, LoRA
        contexts); in one process both are ``model``. See ``engine/distributed.py``."""
        self.world = distributed.world()
        self.strategy = distributed.choose_strategy(config.train.distributed, model)
        self.module = model
        if config.train.gradient_checkpointing:
            enable_gradient_checkpointing(model)  # before DDP/FSDP wrap the layers
        self.model = distributed.wrap_model(model, self.strategy)  # before the optimizer: FSDP2 swaps params
        self.config = config
        self.total_steps = total_steps
        self.run_dir = config.run_dir()
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.optimizer = build_optimizer(model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, optimizer_steps or total_steps)
        self.start_step, self.resumed_from = 0, None
        if config.train.resume:
            self._resume()
        self.metrics = (MetricsLogger(self.run_dir, resume_step=self.resumed_from,
                                      trackers=open_trackers(config, self.run_dir,
                                                             resumed=self.resumed_from is not None))
                        if self.world.is_main else _NoMetrics())  # one writer: rank 0
        self.throughput = Throughput(model, torch.bfloat16 if config.train.bf16 else torch.float32,
                                     self.world.device.type)  # fed by fit and the RL loops: tokens/s and MFU
        self._window_start = time.perf_counter()
        self._window_items = 0
        # called as hook(session, done) at the end of every step, before its checkpoint
        self.hooks: list = []
        if config.audit is not None:
            from tether.audit.hook import AuditHook  # imported only when configured

            self.hooks.append(AuditHook.from_settings(config.audit))
            self.hooks[-1].start(self)  # baseline now: a bad gate fails before training

    def _resume(self) -> None:
        remove_partial_checkpoints(self.checkpoint_dir)
        last = latest_checkpoint(self.checkpoint_dir)
        if last is None:
            raise CheckpointError(f"--resume: no checkpoint in {self.checkpoint_dir}")
        state = load_checkpoint(last, self.module, self.optimizer, self.scheduler)
        if state.get("total_steps", self.total_steps) != self.total_steps:
            raise CheckpointError(f"{last} was saved by a run of {state['total_steps']} steps; "
                                  f"this config plans {self.total_steps}. Resume with the same config.")
        self.start_step = self.resumed_from = state["step"]
        console.print(f"resuming from {last} (step {self.start_step}/{self.total_steps})")

    def autocast(self):
        return torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=self.config.train.bf16)

    def gradient_sync(self, sync: bool):
        """Wrap a micro-batch's forward: ``sync=False`` (all but a rank's last micro-batch of a
        step) lets DDP skip its gradient all-reduce. A no-op in one process and under FSDP."""
        return distributed.gradient_sync(self.model, sync)

    def backward(self, loss: torch.Tensor, step: int, weight: float = 1.0) -> None:
        """``(loss * weight).backward()``, refusing a NaN/inf loss before it touches the weights.

        ``weight`` is this micro-batch's share of the global batch. Under torchrun it is scaled
        by the world size, undoing DDP/FSDP's gradient mean over ranks."""
        if not distributed.all_true(torch.isfinite(loss)):  # every rank stops, none waits forever
            self.diverged(f"loss is {loss.item()} at step {step + 1}")
        (loss * (weight * self.world.size)).backward()

    def optimizer_step(self, step: int, items: int) -> dict[str, float]:
        """Clip, step optimizer and schedule, clear gradients; returns grad_norm and lr."""
        grad_norm = _clip(self.module, self.config.optim.max_grad_norm)
        if self.world.enabled:
            grad_norm = distributed.full_tensor(grad_norm)  # FSDP: a DTensor over the shards
        if not torch.isfinite(grad_norm):
            self.diverged(f"gradient norm is {grad_norm.item()} at step {step + 1}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._window_items += items
        return {"grad_norm": grad_norm.item(), "lr": self.scheduler.get_last_lr()[0]}

    def eval_due(self, done: int, every: int | None) -> bool:
        """Evaluate after step ``done``: every ``every`` steps (None or 0: never) and at the end."""
        return done == self.total_steps or bool(every and done % every == 0)

    def should_log(self, done: int) -> bool:
        return done == self.total_steps or done % self.config.train.log_every == 0

    def log(self, done: int, metrics: dict[str, float]) -> None:
        """Write one metrics line; adds throughput since the previous line (and, at the last step,
        tokens/s and MFU over the whole run as ``run_tokens_per_s``, ``run_mfu``)."""
        elapsed = time.perf_counter() - self._window_start
        metrics["items_per_s"] = self._window_items / max(elapsed, 1e-9)
        metrics.update(self.throughput.take_window())
        if done == self.total_steps:
            run_rates = self.throughput.rates(self.throughput.run, self.throughput.run_phases)
            metrics.update({f"run_{key}": value for key, value in run_rates.items()})
        self._window_start, self._window_items = time.perf_counter(), 0
        self.metrics.log(done, metrics)

    def end_step(self, done: int) -> None:
        """Run the hooks (a failing audit raises before the checkpoint), then checkpoint when due
        (every ``train.save_every`` steps, and at the end)."""
        for hook in self.hooks:
            hook(self, done)
        every = self.config.train.save_every
        if done == self.total_steps or (every and done % every == 0):
            save_checkpoint(self.checkpoint_dir, done, self.module, self.optimizer, self.scheduler,
                            keep_last=self.config.train.keep_last,
                            extra_state={"total_steps": self.total_steps, **self.checkpoint_extras()})

    def checkpoint_extras(self) -> dict:
        """More JSON state a trainer keeps in each checkpoint's state.json (e.g. PPO's KL
        coefficient); read it back with ``resumed_state()``."""
        return {}

    def resumed_state(self) -> dict:
        """The state.json of the checkpoint this run resumed from ({} for a fresh run)."""
        if self.resumed_from is None:
            return {}
        path = self.checkpoint_dir / f"checkpoint-{self.resumed_from:07d}" / "state.json"
        return json.loads(path.read_text())

    def close(self) -> None:
        """End of training: hooks finish (the audit may load its best step's weights back)."""
        for hook in self.hooks:
            if hasattr(hook, "finish"):
                hook.finish(self)
        self.metrics.close()
        summary = self.throughput.summary()
        if summary and self.world.is_main:
            console.print(summary)

    def diverged(self, what: str) -> None:
        last = latest_checkpoint(self.checkpoint_dir)
        kept = f"the last good checkpoint is kept at {last}" if last else "no checkpoint was saved yet"
        raise TrainingDivergedError(f"training diverged: {what}; {kept}. Lower optim.lr, enable "
                                    "optim.max_grad_norm, or check the data for empty completions.")


class _NoMetrics:
    """The metrics sink of ranks other than 0: they compute the same numbers, rank 0 writes them."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def _clip(model: torch.nn.Module, max_norm: float | None) -> torch.Tensor:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def run_eval(model: torch.nn.Module, evaluate) -> dict[str, float]:
    """``evaluate(model)`` in eval mode without gradients, keys prefixed ``eval/``."""
    model.eval()
    try:
        with torch.no_grad():
            return {f"eval/{key}": value for key, value in evaluate(model).items()}
    finally:
        model.train()
