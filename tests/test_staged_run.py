"""The staged-pipeline helper RLHF and CAI share (engine/stages.py), and evaluation_mode."""

import json

import pytest
import torch

from tether.engine.stages import StagedRun
from tether.models import evaluation_mode


def pipeline(run_dir, calls):
    """Three stages: a file, a training folder, a file; each call is recorded."""
    stages = StagedRun("test", run_dir / "summary.json")

    def write(name, path):
        def work():
            calls.append(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
            return {"rows": len(calls)}
        return work

    stages.run("first", run_dir / "first.jsonl", write("first", run_dir / "first.jsonl"))
    stages.run("train", run_dir / "train" / "final", write("train", run_dir / "train" / "final"),
               stage_dir=run_dir / "train")
    stages.run("last", run_dir / "last.jsonl", write("last", run_dir / "last.jsonl"))
    return stages


def test_finished_stages_are_skipped_and_a_rerun_stage_redoes_every_later_one(tmp_path):
    calls = []
    stages = pipeline(tmp_path, calls)
    assert calls == ["first", "train", "last"] and all(s is not None for s in stages.seconds.values())

    calls.clear()
    stages = pipeline(tmp_path, calls)
    assert calls == [] and stages.seconds == {"first": None, "train": None, "last": None}

    # A checkpoint left in the training stage's folder: stale once its data changes, so removed.
    (tmp_path / "train" / "checkpoints").mkdir()
    (tmp_path / "first.jsonl").unlink()
    stages = pipeline(tmp_path, calls)
    assert calls == ["first", "train", "last"]
    assert not (tmp_path / "train" / "checkpoints").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["first"]["rows"] == 1 and summary["last"]["rows"] == 3 and "seconds" in summary["train"]


def test_evaluation_mode_restores_the_training_flag_also_when_the_block_raises():
    network = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    network.train()
    with pytest.raises(RuntimeError), evaluation_mode(network) as device:
        assert not network.training and not network[1].training and device == torch.device("cpu")
        raise RuntimeError("stop")
    assert network.training and network[1].training
    network.eval()
    with evaluation_mode(network):
        pass
    assert not network.training
