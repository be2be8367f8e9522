"""A pipeline of stages in one run folder (``tether train rlhf``, ``tether train cai``).

A stage runs unless its output exists; once one stage runs, every later one runs again (its old
output removed), so no stage's output is older than what it was built from. A training stage's
folder is kept while nothing before it changed, so an interrupted trainer resumes from its last
checkpoint. Under torchrun every rank makes the same decisions (``all_true`` over the same
files); stages that generate or judge run on rank 0 while the others wait, trainers on every rank.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.engine import distributed
from tether.engine.progress import console


class StagedRun:
    """``run(name, output, work)`` per stage, in order. ``seconds`` holds each stage's wall time
    (None: already done, skipped); with a ``summary_path`` each run stage's numbers (the dict its
    work returns) and seconds are kept there across reruns."""

    def __init__(self, label: str, summary_path: Path | None = None):
        self.label, self.summary_path = label, summary_path
        self.rerun = False
        self.seconds: dict[str, float | None] = {}
        self.summary = json.loads(summary_path.read_text()) if summary_path and summary_path.is_file() else {}

    def run(self, name: str, output: Path, work: Callable[[], Any], *, done: bool | None = None,
            stage_dir: Path | None = None, rank_0_only: bool = False) -> None:
        """Stage ``name``: skipped when ``done`` (default: ``output`` exists) and no earlier stage ran.
        ``stage_dir`` is a training stage's run folder, removed with its stale output."""
        done = output.exists() if done is None else done
        if distributed.all_true(done) and not self.rerun:  # every rank has looked before any writes
            console.print(f"[dim]{self.label} stage {name}: done, {output} exists (skipping)[/]")
            self.seconds[name] = None
            return
        if self.rerun and distributed.is_main():  # an earlier stage just ran: this one's output is stale
            if stage_dir is not None and stage_dir.exists():
                shutil.rmtree(stage_dir)
            elif output.is_file():
                output.unlink()
        distributed.barrier()  # nobody looks for a training stage's checkpoints mid-removal
        self.rerun = True
        console.print(f"[bold]{self.label} stage {name}[/bold]")
        started = time.perf_counter()
        if rank_0_only:  # generation and judging are not trainers: rank 0 runs them, the rest wait
            numbers = distributed.main_only(work, f"{self.label} stage {name!r}")
        else:  # the trainers run on every rank (DDP / FSDP)
            numbers = work()
        self.seconds[name] = round(time.perf_counter() - started, 1)
        self.summary[name] = {**(numbers if isinstance(numbers, dict) else {}), "seconds": self.seconds[name]}
        if self.summary_path is not None and distributed.is_main():
            self.summary_path.write_text(json.dumps(self.summary, indent=2) + "\n")
