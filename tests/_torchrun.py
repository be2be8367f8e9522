"""Launching a test file as a ``torchrun`` job on CPU (gloo), for the distributed tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORLD = 2


def run_torchrun(script: str, *args: str, timeout: float = 400) -> None:
    """``torchrun --standalone --nproc_per_node 2 script *args``; fails the test with the job's
    output tails if any rank fails. One thread per rank: the 2 ranks share the machine's cores."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(Path.cwd())}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
         script, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
