"""Training curves from ``metrics.jsonl`` as a PNG, for the people who would rather look."""

from __future__ import annotations

import math
from pathlib import Path

from tether.engine.metrics import read_metrics


def plot_metrics(run_dir: str | Path, keys: list[str], path: str | Path, *, title: str = "") -> Path | None:
    """One panel per metric key present in the run (others are skipped); None if none is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_metrics(run_dir)
    series = {}
    for key in keys:
        points = [(row["step"], row[key]) for row in history
                  if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
        if points:
            series[key] = points
    if not series:
        return None
    figure, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False)
    for axis, (key, points) in zip(axes[0], series.items()):
        steps, values = zip(*points)
        axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3)
        axis.set_title(key, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
