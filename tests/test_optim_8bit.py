"""optim.optimizer=adamw_8bit: bitsandbytes' AdamW8bit, run by fit on CPU."""

import pytest
import torch
from test_engine import make_config, run, toy_data

from tether.engine import read_metrics
from tether.engine.optim import build_optimizer

bnb = pytest.importorskip("bitsandbytes")


def test_8bit_adamw_keeps_8bit_moments_and_trains(tmp_path):
    config = make_config(tmp_path, "train.max_steps=12", "optim.optimizer=adamw_8bit")
    model = run(config, toy_data())
    history = read_metrics(tmp_path / "t")
    assert history[-1]["loss"] < history[0]["loss"] - 1.0  # as test_engine's float32 AdamW run

    optimizer = build_optimizer(model, config.optim)
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    embedding = model.get_input_embeddings().weight
    embedding.grad = torch.randn_like(embedding)
    optimizer.step()
    assert optimizer.state[embedding]["state1"].dtype == torch.uint8
