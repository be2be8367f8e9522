"""Peak memory of one training step with and without ``train.gradient_checkpointing``.

    python benchmarks/checkpointing_memory.py                      # tether:default, LoRA and full, B=4, T=512
    python benchmarks/checkpointing_memory.py --model tiny --seq-len 256

Each configuration runs in a fresh process (peak RSS never goes down) and reports how far one SFT
step (forward, backward, optimizer step) lifts the process's peak resident memory above what it
held after loading the model, plus the step's time. CPU only: on CUDA read
``torch.cuda.max_memory_allocated`` instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STEP = """
import json, resource, sys, time
import torch
sys.path.insert(0, {root!r})
from tether.config import OptimSettings
from tether.engine.activation_checkpointing import enable_gradient_checkpointing
from tether.engine.optim import build_optimizer
from tether.losses.sft import sft_loss
from tether.models import apply_lora, load_model
from tether.models.tiny import save_tiny_llama

model_name, mode, checkpointing, batch_size, seq_len = {args!r}
if model_name == "tiny":
    import tempfile
    model_name = str(save_tiny_llama(tempfile.mkdtemp() + "/tiny", max_position_embeddings=4096))
model, tokenizer = load_model(model_name)
if mode == "lora":
    model = apply_lora(model, r=16, alpha=32, target_modules="all-linear")
if checkpointing:
    enable_gradient_checkpointing(model)
model.train()
optimizer = build_optimizer(model, OptimSettings(lr=1e-6))
generator = torch.Generator().manual_seed(0)
input_ids = torch.randint(10, min(len(tokenizer), 5000), (batch_size, seq_len), generator=generator)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
loss, _ = sft_loss(model(input_ids=input_ids, use_cache=False).logits, input_ids)
loss.backward()
optimizer.step()
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"step_peak_mib": (after - before) / 1024, "peak_rss_mib": after / 1024, "seconds": seconds}}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="default, tiny, or a model folder")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args(argv)
    root = str(Path(__file__).resolve().parent.parent)
    print(f"{'mode':<6}{'checkpointing':>14}{'step peak MiB':>15}{'peak RSS MiB':>14}{'step s':>8}")
    for mode in args.modes.split(","):
        for checkpointing in (False, True):
            code = STEP.format(root=root, args=(args.model, mode, checkpointing, args.batch_size, args.seq_len))
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(done.stderr)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{mode:<6}{'on' if checkpointing else 'off':>14}{row['step_peak_mib']:>15.0f}"
                  f"{row['peak_rss_mib']:>14.0f}{row['seconds']:>8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
