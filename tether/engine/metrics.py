"""Metrics sink: one JSON line per logged step in ``metrics.jsonl``, mirrored to the trackers
of ``train.report_to`` (TensorBoard, Weights & Biases, MLflow: see ``trackers.py``)."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    def __init__(self, run_dir: Path, *, trackers: list = (), resume_step: int | None = None):
        """``trackers``: objects with ``log(step, metrics)`` and ``close()`` (``open_trackers``)."""
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._drop_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run in an old folder starts a fresh log
        self._file = self.path.open("a", encoding="utf-8")
        self._trackers = list(trackers)

    def _drop_after(self, step: int) -> None:
        """On resume, forget lines written after the checkpoint: they will be written again."""
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {key: (float(value) if isinstance(value, (int, float)) else value)
                 for key, value in metrics.items()}
        record = {"step": step, "time": round(time.time(), 3), **clean}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        for tracker in self._trackers:
            tracker.log(step, clean)

    def close(self) -> None:
        self._file.close()
        for tracker in self._trackers:
            tracker.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
