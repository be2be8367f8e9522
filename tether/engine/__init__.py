"""The shared trainer core: every algorithm builds on these pieces instead of its own copies."""

from tether.engine import distributed
from tether.engine.batches import BatchPlan
from tether.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tether.engine.loop import FitResult, fit
from tether.engine.metrics import MetricsLogger, read_metrics
from tether.engine.progress import console, progress_bar
from tether.engine.run import check_run, start_run
from tether.engine.session import TrainingSession, run_eval

__all__ = ["BatchPlan", "FitResult", "MetricsLogger", "TrainingSession", "check_run", "console", "distributed", "fit",
           "latest_checkpoint", "load_checkpoint", "progress_bar", "read_metrics", "run_eval",
           "save_checkpoint", "start_run"]
