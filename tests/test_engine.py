"""The shared step loop: accumulation, schedules, NaN guard, checkpoints and exact resume."""

import json
import math

import pytest
import torch

from tether.algorithms.sft import SFTConfig
from tether.config import load_config
from tether.engine import BatchPlan, fit, latest_checkpoint, read_metrics
from tether.engine.checkpoint import list_checkpoints, save_checkpoint
from tether.engine.optim import lr_multiplier
from tether.errors import CheckpointError, TrainingDivergedError
from tether.losses.sft import sft_loss
from tether.models.tiny import tiny_llama


def make_config(tmp_path, *overrides):
    return load_config(SFTConfig, None, [
        "data.train=unused.jsonl", f"train.output_dir={tmp_path}", "train.run_name=t",
        "train.progress=false", "train.bf16=false", "train.tensorboard=false", "optim.lr=1e-2", *overrides])


def toy_data(num_examples=16, length=12, seed=0):
    """Counting sequences (s, s+1, s+2, ...): learnable in a few steps, unlike random tokens."""
    starts = torch.randint(4, 24, (num_examples, 1), generator=torch.Generator().manual_seed(seed))
    return starts + torch.arange(length)


def toy_job(data):
    def make_epoch(seed):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
        return [order[i:i + 2] for i in range(0, len(order), 2)]

    def collate(indices):
        input_ids = data[indices]
        labels = input_ids.clone()
        for row, index in enumerate(indices):  # prompts of 2..9 tokens: micro-batches differ in size
            labels[row, :2 + index % 8] = -100
        return {"input_ids": input_ids, "labels": labels, "num_items": int((labels[:, 1:] != -100).sum())}

    def compute_loss(model, batch):
        loss, _ = sft_loss(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        return loss, {}

    return make_epoch, collate, compute_loss


def run(config, data, **plan_kwargs):
    model, _ = tiny_llama(seed=0)
    make_epoch, collate, compute_loss = toy_job(data)
    plan = BatchPlan(make_epoch, seed=config.train.seed, grad_accum=config.train.grad_accum,
                     max_steps=config.train.max_steps, epochs=config.train.epochs, **plan_kwargs)
    fit(model, plan, collate, compute_loss, config)
    return model


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_lr_schedule_warmup_then_cosine_to_zero():
    values = [lr_multiplier(s, total_steps=10, warmup_steps=2, schedule="cosine") for s in range(11)]
    assert values[:2] == [0.5, 1.0]
    assert values[2] == 1.0 and math.isclose(values[6], 0.5) and values[10] == 0.0
    assert lr_multiplier(5, total_steps=10, warmup_steps=0, schedule="linear") == 0.5


def test_loss_falls_and_metrics_are_written(tmp_path):
    config = make_config(tmp_path, "train.max_steps=12")
    run(config, toy_data())
    history = read_metrics(tmp_path / "t")
    assert [row["step"] for row in history] == list(range(1, 13))
    assert history[-1]["loss"] < history[0]["loss"] - 1.0
    assert {"loss", "grad_norm", "lr", "items_per_s"} <= set(history[0])
    assert latest_checkpoint(tmp_path / "t" / "checkpoints").name == "checkpoint-0000012"


@pytest.mark.parametrize("bf16", [False, True])
def test_gradient_accumulation_matches_the_big_batch(tmp_path, bf16):
    data = toy_data()

    # One step of 2 micro-batches of 2 sequences == one step of 1 batch of 4 sequences.
    def epoch_of_fours(seed):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
        return [order[i:i + 4] for i in range(0, len(order), 4)]

    precision = f"train.bf16={str(bf16).lower()}"
    accumulated = run(make_config(tmp_path / "a", "train.max_steps=2", "train.grad_accum=2", precision), data)
    model, _ = tiny_llama(seed=0)
    start = weights(model)
    _, collate, compute_loss = toy_job(data)
    config = make_config(tmp_path / "b", "train.max_steps=2", precision)
    fit(model, BatchPlan(epoch_of_fours, seed=0, grad_accum=1, max_steps=2), collate, compute_loss, config)
    if not bf16:
        for name, value in weights(accumulated).items():
            torch.testing.assert_close(value, weights(model)[name], atol=2e-5, rtol=1e-4)
        return
    # bf16 matmuls of a 2-row and a 4-row batch round differently (8-bit mantissa), and Adam's first
    # steps move a weight whose gradient is near 0 by up to lr either way, so weights cannot match to
    # float32 tolerances. The updates still must agree: 2% apart here (float32: 5e-6), while weighting
    # the two micro-batches equally instead of by their tokens puts them 15% apart in either precision.
    update_big = torch.cat([(weights(model)[n] - start[n]).flatten() for n in start])
    update_accumulated = torch.cat([(weights(accumulated)[n] - start[n]).flatten() for n in start])
    assert (update_accumulated - update_big).norm() / update_big.norm() < 0.05


def test_resume_continues_to_the_same_weights(tmp_path):
    data = toy_data()
    straight = run(make_config(tmp_path / "straight", "train.max_steps=10"), data)

    # First half, saving every 5 steps, then a second process-like call that resumes.
    half = make_config(tmp_path / "resumed", "train.max_steps=10", "train.save_every=5")
    model, _ = tiny_llama(seed=0)
    make_epoch, collate, compute_loss = toy_job(data)
    plan = BatchPlan(make_epoch, seed=0, grad_accum=1, max_steps=10)
    stop_after_5 = {"n": 0}

    def loss_that_stops(model, batch):
        stop_after_5["n"] += 1
        if stop_after_5["n"] > 5:
            raise KeyboardInterrupt
        return compute_loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        fit(model, plan, collate, loss_that_stops, half)
    assert latest_checkpoint(tmp_path / "resumed" / "t" / "checkpoints").name == "checkpoint-0000005"

    resumed = run(make_config(tmp_path / "resumed", "train.max_steps=10", "train.resume=true"), data)
    for name, value in weights(straight).items():
        torch.testing.assert_close(weights(resumed)[name], value, atol=0, rtol=0)
    steps = [row["step"] for row in read_metrics(tmp_path / "resumed" / "t")]
    assert steps == list(range(1, 11))  # no duplicated lines after the resume


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    data = toy_data()
    config = make_config(tmp_path, "train.max_steps=6", "train.save_every=2")
    model, _ = tiny_llama(seed=0)
    make_epoch, collate, compute_loss = toy_job(data)
    calls = {"n": 0}

    def loss_that_explodes(model, batch):
        calls["n"] += 1
        loss, metrics = compute_loss(model, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 3; the last good "
                                                    r"checkpoint is kept at .*checkpoint-0000002"):
        fit(model, BatchPlan(make_epoch, seed=0, grad_accum=1, max_steps=6), collate,
            loss_that_explodes, config)
    assert [p.name for p in list_checkpoints(tmp_path / "t" / "checkpoints")] == ["checkpoint-0000002"]


def test_resume_without_checkpoint_and_with_other_plan_fail(tmp_path):
    data = toy_data()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        run(make_config(tmp_path, "train.max_steps=4", "train.resume=true"), data)
    run(make_config(tmp_path, "train.max_steps=4"), data)
    with pytest.raises(CheckpointError, match="saved by a run of 4 steps; this config plans 6"):
        run(make_config(tmp_path, "train.max_steps=6", "train.resume=true"), data)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    model, _ = tiny_llama(seed=0)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, optimizer, scheduler, keep_last=2)
    (tmp_path / ".checkpoint-0000004.tmp-999").mkdir()  # what a kill mid-save leaves
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-0000002", "checkpoint-0000003"]
    state = json.loads((tmp_path / "checkpoint-0000003" / "state.json").read_text())
    assert state["step"] == 3
