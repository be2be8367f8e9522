"""Experiment trackers (``train.report_to``): TensorBoard, Weights & Biases, MLflow.

``metrics.jsonl`` is always written; trackers get the same numbers, through their own client
libraries, from rank 0 only. Weights & Biases and MLflow are optional extras
(``pip install 'tether[wandb]'``, ``'tether[mlflow]'``), imported only when listed. Each run
gets the resolved config as its hyperparameters. A resumed run (``--resume``) continues the same
tracker run: its id is kept in ``runs/NAME/trackers.json``.

Their own environment variables configure them as usual: ``WANDB_MODE=offline``,
``WANDB_PROJECT``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME`` (both projects default to
"tether").
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

from tether.errors import ConfigError, TetherError

# tracker -> (the module it imports, the pip extra that installs it)
PACKAGES = {"tensorboard": ("tensorboard", None), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow")}
IDS_FILE = "trackers.json"


def require_trackers(names: list[str]) -> None:
    """Raise ConfigError naming the extra to install for every listed tracker that is missing.
    Cheap (no import): runs before the run folder or the model exist."""
    for name in names:
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            install = f"pip install 'tether[{extra}]'" if extra else f"pip install {module}"
            raise ConfigError(f"train.report_to lists {name}, but the {module} package is not "
                              f"installed: {install}, or remove {name} from train.report_to.")


def open_trackers(config, run_dir: Path, *, resumed: bool) -> list:
    """The trackers ``config.train`` asks for, started for this run."""
    names = config.train.trackers()
    require_trackers(names)
    ids_path = Path(run_dir) / IDS_FILE
    ids = json.loads(ids_path.read_text()) if resumed and ids_path.is_file() else {}
    hyperparameters = config.model_dump(mode="json")
    trackers = []
    for name in names:
        tracker = _OPENERS[name](config, Path(run_dir), hyperparameters, ids.get(name))
        trackers.append(tracker)
        if getattr(tracker, "run_id", None):
            ids[name] = tracker.run_id
    if ids:
        ids_path.write_text(json.dumps(ids, indent=2) + "\n")
    return trackers


def finite_numbers(metrics: dict) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(value)}


class TensorBoardTracker:
    def __init__(self, config, run_dir: Path, hyperparameters: dict, run_id: str | None):
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when asked

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in finite_numbers(metrics).items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, config, run_dir: Path, hyperparameters: dict, run_id: str | None):
        import wandb

        try:
            # console="off": tether's progress bar redraws would fill the wandb log.
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tether"),
                                  name=config.train.run_name, dir=str(run_dir), config=hyperparameters,
                                  id=run_id, resume="allow" if run_id else None,
                                  settings=wandb.Settings(console="off", quiet=True))
        except Exception as error:  # wandb raises its own types for login and network problems
            raise TetherError(f"Weights & Biases could not start a run: {error}. Run `wandb login`, "
                              "or set WANDB_MODE=offline to log locally.") from error
        self.run_id = self.run.id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(finite_numbers(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, config, run_dir: Path, hyperparameters: dict, run_id: str | None):
        import mlflow

        self.mlflow = mlflow
        try:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "tether"))
            run = mlflow.start_run(run_id=run_id, run_name=None if run_id else config.train.run_name)
        except mlflow.exceptions.MlflowException as error:
            raise TetherError(f"MLflow could not start a run at tracking URI "
                              f"{mlflow.get_tracking_uri()!r}: {error}") from error
        self.run_id = run.info.run_id
        if run_id is None:  # MLflow refuses to change a logged parameter (train.resume does)
            mlflow.log_params({key: str(value)[:6000]  # MLflow's longest parameter value
                               for key, value in _flatten(hyperparameters).items()})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics(finite_numbers(metrics), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}"""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_OPENERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}
