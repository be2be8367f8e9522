"""Is bf16 fast on this CPU? Single-thread matmul timings, float32 vs bfloat16, at the shapes of a
GRPO step on SmolLM2-135M (hidden 576, MLP 1536, vocabulary 49152).

    python benchmarks/bf16_matmul.py

Best of 5, the two dtypes interleaved so neighbours' load hits both alike. Without AMX or
avx512_bf16, bfloat16 matmuls are emulated and many times slower than float32; there
``train.bf16: auto`` stays float32 (tether/hardware.py).
"""

from __future__ import annotations

import time

import torch

SHAPES = {"decode (64x576 @ 576x1536)": (64, 576, 1536), "train (2048x576 @ 576x1536)": (2048, 576, 1536),
          "lm head (512x576 @ 576x49152)": (512, 576, 49152)}


def best_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int = 5) -> dict[torch.dtype, float]:
    best: dict[torch.dtype, float] = {}
    for _ in range(repeats):
        for dtype in (torch.float32, torch.bfloat16):
            x, y = a.to(dtype), b.to(dtype)
            start = time.perf_counter()
            x @ y
            best[dtype] = min(best.get(dtype, float("inf")), time.perf_counter() - start)
    return best


def main() -> None:
    torch.set_num_threads(1)
    for name, (m, k, n) in SHAPES.items():
        best = best_seconds(torch.randn(m, k), torch.randn(k, n))
        print(f"{name}: float32 {best[torch.float32] * 1e3:.1f} ms, bfloat16 {best[torch.bfloat16] * 1e3:.1f} ms, "
              f"bfloat16 {best[torch.bfloat16] / best[torch.float32]:.1f}x slower")


if __name__ == "__main__":
    main()
