"""SFT forward + backward with the lm_head over every position vs only where a label is read.

    python benchmarks/sft_prompt_logits.py        # default model, LoRA r=16, 4 x 256 tokens, first half prompt

Same loss either way (printed); the second skips the prompts' logits (``labelled_positions`` +
``logits_to_keep``, what ``train_sft`` does). Alternates the two, 3 timings each; best and all.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tether.losses.sft import labelled_positions, next_token_loss, sft_loss  # noqa: E402
from tether.models import apply_lora, load_model  # noqa: E402

model, _ = load_model("default")
model = apply_lora(model, r=16, alpha=32, target_modules="all-linear")
model.train()
ids = torch.randint(10, 5000, (4, 256), generator=torch.Generator().manual_seed(0))
labels = ids.clone()
labels[:, :128] = -100  # prompts: the first half of each row


def every_position() -> float:
    loss, _ = sft_loss(model(input_ids=ids, use_cache=False).logits, labels)
    loss.backward()
    model.zero_grad()
    return loss.item()


def labelled_only() -> float:
    positions = labelled_positions(labels)
    loss, _ = next_token_loss(model(input_ids=ids, use_cache=False, logits_to_keep=positions).logits,
                              labels[:, positions + 1])
    loss.backward()
    model.zero_grad()
    return loss.item()


print("losses", every_position(), labelled_only())
times = {"full logits": [], "labelled positions": []}
for _ in range(3):
    for name, step in (("full logits", every_position), ("labelled positions", labelled_only)):
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)
for name, seconds in times.items():
    print(f"{name}: best {min(seconds):.2f} s, all {[round(s, 2) for s in seconds]}")
