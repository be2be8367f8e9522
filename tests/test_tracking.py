"""train.report_to: metrics and the config reach TensorBoard, Weights & Biases (offline mode) and
MLflow (a file: store) through their own client libraries; a missing one fails before the run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct

import pytest

from tether.algorithms.sft import SFTConfig, train_sft
from tether.config import load_config
from tether.engine import read_metrics
from tether.errors import ConfigError
from tether.models.tiny import save_tiny_llama


@pytest.fixture
def job(tmp_path):
    save_tiny_llama(tmp_path / "model")
    with (tmp_path / "sft.jsonl").open("w") as handle:
        for i in range(12):
            handle.write(json.dumps({"prompt": f"What is {i} plus {i}?",
                                     "completion": f"The answer is {2 * i}."}) + "\n")
    return tmp_path


def config_for(job, *overrides):
    return load_config(SFTConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'sft.jsonl'}",
        f"train.output_dir={job / 'runs'}", "train.run_name=tracked", "train.batch_size=4",
        "train.max_steps=3", "optim.lr=1e-3", "train.progress=false", "train.bf16=false", *overrides])


def logged_losses(config) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(config.run_dir())}


def test_report_to_defaults_to_tensorboard_and_the_old_switch_still_works(job):
    assert config_for(job).train.trackers() == ["tensorboard"]
    assert config_for(job, "train.tensorboard=false").train.trackers() == []
    assert config_for(job, "train.report_to=[mlflow,tensorboard]",
                      "train.tensorboard=false").train.trackers() == ["mlflow"]
    with pytest.raises(ConfigError, match="lists a tracker twice"):
        config_for(job, "train.report_to=[wandb,wandb]")
    with pytest.raises(ConfigError, match="report_to"):
        config_for(job, "train.report_to=[comet]")


def test_a_missing_tracker_library_names_its_extra_before_the_run_starts(job, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "wandb" else real_find_spec(name, *args))
    config = config_for(job, "train.report_to=[tensorboard,wandb]")
    with pytest.raises(ConfigError) as error:
        train_sft(config)
    assert str(error.value) == ("train.report_to lists wandb, but the wandb package is not installed: "
                                "pip install 'tether[wandb]', or remove wandb from train.report_to.")
    assert not config.run_dir().exists()  # nothing written, no model loaded


def wandb_records(path):
    """The records of an offline W&B run file (a LevelDB-style log of wandb protobufs)."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending, position, block = path.read_bytes(), [], b"", 7, 32768  # 7: file header
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind in (1, 2):  # a whole record, or its first piece
            pending = chunk
        elif kind == 3:
            pending += chunk
        if kind in (1, 4):  # a whole record, or its last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk if kind == 4 else pending)
            records.append(record)
        if kind == 0:
            break
    return records


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs: pip install 'tether[wandb]'")
def test_wandb_offline_run_gets_every_metric_and_the_config(job, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(job / "wandb-home"))
    config = config_for(job, "train.report_to=[tensorboard,wandb]")
    train_sft(config)

    assert list((config.run_dir() / "tensorboard").glob("events.out.tfevents.*"))
    [run_file] = (config.run_dir() / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds.count("run") == 1, kinds
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.project) == ("tracked", "tether")
    hyperparameters = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in run.config.update}
    assert hyperparameters["train"]["run_name"] == "tracked"
    assert hyperparameters["model"]["path"] == str(job / "model")
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert {row["_step"]: row["loss"] for row in history} == pytest.approx(logged_losses(config))
    assert json.loads((config.run_dir() / "trackers.json").read_text()) == {"wandb": run.run_id}


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="needs: pip install 'tether[mlflow]'")
def test_mlflow_file_store_gets_every_metric_and_the_config_as_parameters(job, monkeypatch):
    import mlflow

    store = f"file:{job / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database
    config = config_for(job, "train.report_to=[mlflow]")
    train_sft(config)

    assert not (config.run_dir() / "tensorboard").exists()
    client = mlflow.MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("tether").experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["train.run_name"] == "tracked"
    assert run.data.params["optim.lr"] == "0.001"
    assert run.data.params["model.path"] == str(job / "model")
    history = client.get_metric_history(run.info.run_id, "loss")
    assert {metric.step: metric.value for metric in history} == pytest.approx(logged_losses(config))
    assert set(run.data.metrics) >= {"loss", "grad_norm", "tokens"}


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="needs: pip install 'tether[mlflow]'")
def test_a_resumed_run_logs_into_the_same_mlflow_run(job, monkeypatch):
    import mlflow

    store = f"file:{job / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    steps = ["train.report_to=[mlflow]", "train.max_steps=4", "train.save_every=2"]
    config = config_for(job, *steps)
    train_sft(config)
    shutil.rmtree(config.run_dir() / "checkpoints" / "checkpoint-0000004")  # as if killed after step 3
    train_sft(config_for(job, *steps, "train.resume=true"))

    client = mlflow.MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("tether").experiment_id])
    assert json.loads((config.run_dir() / "trackers.json").read_text()) == {"mlflow": run.info.run_id}
    assert sorted(metric.step for metric in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 3, 4, 4]


def test_the_cai_pipeline_checks_its_stages_trackers_before_the_first_stage(job, monkeypatch):
    from tether.algorithms.cai import CAIConfig, run_cai

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "mlflow" else real_find_spec(name, *args))
    (job / "prompts.jsonl").write_text(json.dumps({"prompt": "How do I hurt someone?", "kind": "harmful"}) + "\n")
    config = load_config(CAIConfig, None, [
        f"train.output_dir={job / 'runs'}", f"prompts.path={job / 'prompts.jsonl'}",
        f"sft.model.path={job / 'model'}", "dpo.train.report_to=[mlflow]", "sft.train.bf16=false",
        "dpo.train.bf16=false"])
    with pytest.raises(ConfigError, match=r"pip install 'tether\[mlflow\]'"):
        run_cai(config)
    assert not (job / "runs").exists()  # no stage ran, no folder was made
