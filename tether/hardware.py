"""Whether bf16 autocast pays on this machine.

On CPUs with AMX (Sapphire Rapids and later) bf16 matmuls run several times faster than float32;
without it, PyTorch emulates them and autocast makes training slower (the numbers:
benchmarks/RESULTS.md, "Measurements behind design choices"). ``train.bf16: auto`` asks this module.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def bf16_is_fast() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags
