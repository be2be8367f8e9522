import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see tether/cli.py

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models gain nothing from threads, and results stay repeatable


@pytest.fixture
def tiny():
    from tether.models.tiny import tiny_llama

    return tiny_llama(seed=0)
