"""Where a training step's time goes: torch.profiler over one SFT or DPO step (mfu.py's steps).

    python benchmarks/profile_step.py                                  # default model, LoRA, sft+dpo, fp32+bf16
    python benchmarks/profile_step.py --model tiny --top 8

One warm-up step, then one profiled step per configuration; prints, per configuration, the ops with
the most self CPU time and their share of the step (markdown, for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mfu  # noqa: E402


def profile_one(algo: str, mode: str, bf16: bool, args) -> list[tuple[str, float, float]]:
    args.bf16 = bf16
    model, tokenizer = mfu.load_model("default" if args.model == "default" else args.model_path)
    if mode == "lora":
        model = mfu.apply_lora(model, r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    model.train()
    optimizer = mfu.build_optimizer(model, mfu.OptimSettings(lr=1e-6))

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    step = mfu.STEPS[algo](model, tokenizer, mfu.ModelShape.of(model), args)
    step(optimizer, autocast)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        timing = step(optimizer, autocast)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    print(f"\n{algo} {mode} {'bf16' if bf16 else 'float32'}: step {timing.seconds:.2f} s "
          f"(profiled), {timing.flops / timing.seconds / 1e9:.1f} GFLOP/s\n")
    print("| op | self CPU ms | share | calls |\n|---|---:|---:|---:|")
    for e in events[:args.top]:
        print(f"| `{e.key}` | {e.self_cpu_time_total / 1e3:.0f} | {e.self_cpu_time_total / total:.1%} | {e.count} |")
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["default", "tiny"], default="default")
    parser.add_argument("--algos", default="sft,dpo")
    parser.add_argument("--modes", default="lora")
    parser.add_argument("--dtypes", default="float32,bf16")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "tiny":
        import tempfile

        from tether.models.tiny import save_tiny_llama

        args.model_path = save_tiny_llama(Path(tempfile.mkdtemp()) / "tiny")
    print(f"machine: {mfu.machine_name()}, {os.cpu_count()} logical CPUs, {args.threads} threads, "
          f"torch {torch.__version__}; B={args.batch_size}, T={args.seq_len}")
    for algo in args.algos.split(","):
        for mode in args.modes.split(","):
            for dtype in args.dtypes.split(","):
                profile_one(algo, mode, dtype == "bf16", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
