"""A model's training flag set for a block and put back after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def evaluation_mode(network: torch.nn.Module) -> Iterator[torch.device]:
    """The network in eval mode (dropout off) for the block, its training flag restored after, also
    when the block raises; yields the device its parameters are on."""
    was_training = network.training
    network.eval()
    try:
        yield next(network.parameters()).device
    finally:
        network.train(was_training)
