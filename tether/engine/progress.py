"""Rich progress bars with ETA for every long step (training, generation, evaluation)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task

    def advance(self, amount: int = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=amount, **fields)

    def set(self, completed: int, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, **fields)


@contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True, completed: int = 0,
                 status: str = "") -> Iterator[_Bar]:
    """A bar with count, elapsed time, ETA and a free-form ``status`` field (e.g. the loss).

    Disabled (a no-op) when asked, or when stderr is not a terminal and the run is short enough
    that a redrawn bar would only clutter a log.
    """
    from tether.engine.distributed import is_main

    if not enabled or not is_main():  # under torchrun one bar, rank 0's
        yield _Bar(None, None)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                        TextColumn("{task.fields[status]}"), console=console,
                        disable=not sys.stderr.isatty() and total < 2, transient=False)
    with progress:
        task = progress.add_task(description, total=total, completed=completed, status=status)
        yield _Bar(progress, task)
