"""SFT from the command line on a tiny model: the loss falls, and a SIGKILLed run resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tether.engine import latest_checkpoint, read_metrics
from tether.models.tiny import save_tiny_llama


@pytest.fixture
def workdir(tmp_path):
    save_tiny_llama(tmp_path / "model")
    with (tmp_path / "sft.jsonl").open("w") as handle:
        for i in range(40):
            handle.write(json.dumps({"prompt": f"What is {i} plus {i}?",
                                     "completion": f"The answer is {2 * i}."}) + "\n")
    return tmp_path


def tether_command(workdir, *overrides):
    return [sys.executable, "-m", "tether.cli", "train", "sft", f"model.path={workdir / 'model'}",
            f"data.train={workdir / 'sft.jsonl'}", f"train.output_dir={workdir / 'runs'}",
            "train.batch_size=4", "optim.lr=3e-3", "train.threads=1", "train.progress=false", "train.bf16=false",
            "train.tensorboard=false", *overrides]


def run_tether(workdir, *overrides):
    result = subprocess.run(tether_command(workdir, *overrides), capture_output=True, text=True,
                            cwd=workdir, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_sft_cli_loss_falls(workdir):
    run_tether(workdir, "train.run_name=falls", "train.max_steps=30")
    history = read_metrics(workdir / "runs" / "falls")
    assert history[-1]["loss"] < history[0]["loss"] * 0.6
    assert (workdir / "runs" / "falls" / "final" / "model.safetensors").is_file()
    assert (workdir / "runs" / "falls" / "config.yaml").is_file()


def test_sigkilled_run_resumes_to_the_same_weights(workdir):
    steps = ["train.max_steps=300", "train.save_every=5"]
    run_tether(workdir, "train.run_name=straight", *steps)

    checkpoints = workdir / "runs" / "killed" / "checkpoints"
    process = subprocess.Popen(tether_command(workdir, "train.run_name=killed", *steps), cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and latest_checkpoint(checkpoints) is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = latest_checkpoint(checkpoints)
    assert killed_at is not None and killed_at.name != "checkpoint-0000300", "the run was not killed mid-training"
    assert not (workdir / "runs" / "killed" / "final").exists()

    result = run_tether(workdir, "train.run_name=killed", "train.resume=true", *steps)
    assert f"resuming from {killed_at}" in result.stderr.replace("\n", "")
    straight = load_file(str(workdir / "runs" / "straight" / "final" / "model.safetensors"))
    resumed = load_file(str(workdir / "runs" / "killed" / "final" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        assert (tensor == resumed[name]).all(), f"{name} differs after resume"
    assert [row["step"] for row in read_metrics(workdir / "runs" / "killed")] == list(range(1, 301))


def test_fresh_run_refuses_a_folder_with_checkpoints(workdir):
    run_tether(workdir, "train.run_name=once", "train.max_steps=2")
    result = subprocess.run(tether_command(workdir, "train.run_name=once", "train.max_steps=2"),
                            capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 2
    assert "already holds checkpoints; resume it with --resume" in result.stderr


def test_bad_data_fails_before_training_with_file_and_line(workdir):
    (workdir / "bad.jsonl").write_text('{"prompt": "hi", "completion": "hello"}\n{"prompt": "", "completion": "x"}\n')
    result = subprocess.run(tether_command(workdir, f"data.train={workdir / 'bad.jsonl'}",
                                           "train.run_name=bad"), capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 2
    assert f"{workdir / 'bad.jsonl'}:2: field 'prompt'" in result.stderr
    assert not (workdir / "runs" / "bad").exists()  # checked before the run folder is made


def test_packed_sft_trains_and_counts_the_same_tokens(workdir):
    run_tether(workdir, "train.run_name=packed", "train.max_steps=20", "data.batching=pack",
               "data.max_length=64", "train.batch_size=96")
    history = read_metrics(workdir / "runs" / "packed")
    assert history[-1]["loss"] < history[0]["loss"] * 0.7
    assert all(row["tokens"] > 0 for row in history)


def test_overrides_may_follow_options(workdir):
    command = tether_command(workdir, "train.run_name=mixed")
    command.insert(command.index("train") + 2, "--resume")  # `train sft --resume a=b ...`
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 2 and "no checkpoint in" in result.stderr


def test_text_rows_train_on_every_token(workdir):
    """TRL's language-modelling rows: the loss counts every token after the first of each row."""
    from tether.algorithms.sft import SFTConfig, train_sft
    from tether.config import load_config
    from tether.models import load_tokenizer

    texts = [f"Count: {' '.join(str(n) for n in range(i + 3))}." for i in range(4)]
    (workdir / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = load_config(SFTConfig, None, [
        f"model.path={workdir / 'model'}", f"data.train={workdir / 'text.jsonl'}",
        f"train.output_dir={workdir / 'runs'}", "train.run_name=text", "train.batch_size=4",
        "train.max_steps=1", "train.progress=false", "train.tensorboard=false", "train.bf16=false"])
    train_sft(config)
    tokenizer = load_tokenizer(workdir / "model")
    row_lengths = [len(tokenizer(t)["input_ids"]) + 1 for t in texts]  # + EOS
    assert read_metrics(workdir / "runs" / "text")[0]["tokens"] == sum(n - 1 for n in row_lengths)
