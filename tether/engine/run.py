"""Start of every run: the run folder, the resolved config beside it, seeds and threads."""

from __future__ import annotations

from pathlib import Path

import torch

from tether.config import RunConfig, save_config
from tether.engine import distributed
from tether.engine.checkpoint import latest_checkpoint
from tether.engine.determinism import seed_everything
from tether.engine.progress import console
from tether.engine.trackers import require_trackers
from tether.errors import CheckpointError, ConfigError


def check_run(config: RunConfig) -> None:
    """The checks on the run folder and the audit settings that need no model, made before
    anything is loaded or written: a fresh run must not overwrite checkpoints, ``--resume`` needs
    one to resume from, and the audit hook's metrics and gate names must exist."""
    _refuse_overwrite(config)
    checkpoints = config.run_dir() / "checkpoints"
    if config.train.resume and latest_checkpoint(checkpoints) is None:
        raise CheckpointError(f"--resume: no checkpoint in {checkpoints}")
    if config.audit is not None:
        from tether.audit.hook import AuditHook  # imported only when configured

        AuditHook.from_settings(config.audit).check_names()


def start_run(config: RunConfig) -> Path:
    """Check the trackers are installed, create ``runs/NAME/``, save ``config.yaml``, seed every
    RNG, set torch threads.

    Under torchrun this is where every rank joins the process group; rank 0 writes the folder
    and all ranks seed alike (their data differs by the batch plan, not by the seed).

    A fresh run refuses a folder that already holds checkpoints, so nothing is overwritten by
    accident: pass ``train.resume=true`` to continue it, or pick another ``train.run_name``.
    Trainers call ``check_run`` (and load and check their data and rewards) before this, so a
    run that cannot start leaves no folder behind.
    """
    require_trackers(config.train.trackers())  # a missing extra fails before any folder or model
    world = distributed.init_distributed()
    run_dir = config.run_dir()
    _refuse_overwrite(config)
    distributed.barrier()  # every rank has looked for checkpoints before rank 0 writes anything
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    console.print(f"run folder: {run_dir}" + (f" ({world.size} processes)" if world.enabled else ""))
    return run_dir


def _refuse_overwrite(config: RunConfig) -> None:
    if not config.train.resume and latest_checkpoint(config.run_dir() / "checkpoints") is not None:
        raise ConfigError(f"{config.run_dir()} already holds checkpoints; resume it with --resume "
                          "(train.resume=true) or choose another train.run_name")
