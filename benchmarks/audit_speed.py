"""How long the audit suite takes: seconds per metric module, the model audited against itself.

    python benchmarks/audit_speed.py                       # default suite, bundled SmolLM2, 2 threads
    python benchmarks/audit_speed.py --suite quick --model tiny
    python benchmarks/audit_speed.py --cost                # first: what one batch of each kind costs

The target: the whole default suite in under ~5 minutes on 2 CPU cores. Each module's default
sizes (probes, new tokens, samples) were chosen from ``--cost``: a greedy batch of 16 prompts x
32 tokens, a sampled batch of 4 prompts x 4 samples x 20 tokens, and a drift batch (16 samples,
two teacher-forced forwards over the full vocabulary). Model loading is timed apart. Auditing a
model against itself does the same work as against a different one (every metric still runs on
both), and every drift value is exactly 0, which doubles as a check.

On a machine shared with other jobs the wall times can be several times the idle ones, so each
module's CPU seconds are shown too. CPU seconds / threads estimates the wall time on unshared
cores: too low where the work does not keep every thread busy, too high where sharing the cores
made the threads wait actively.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see tether/cli.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load(name: str):
    from tether.models import load_model
    from tether.models.tiny import tiny_llama

    if name == "tiny":
        return tiny_llama(seed=0)
    return load_model(name)


def measure_cost(audit_model) -> dict[str, float]:
    """Seconds for one batch of each kind of work the metrics do."""
    from tether.audit.metrics import load_probes
    from tether.audit.metrics.drift import sample_drift

    prompts = [row["prompt"] for row in load_probes("refusal_safe")[:16]]
    cost = {}
    start = time.perf_counter()
    audit_model.answer(prompts, max_new_tokens=32, progress=False)
    cost["greedy 16 prompts x 32 tokens"] = time.perf_counter() - start
    start = time.perf_counter()
    audit_model.sample(prompts[:4], num_samples=4, max_new_tokens=20)
    cost["sampled 4 prompts x 4 samples x 20 tokens"] = time.perf_counter() - start
    start = time.perf_counter()
    sample_drift(audit_model, audit_model, prompts, max_new_tokens=24)
    cost["drift 16 prompts x 24 tokens (sample + 2 forwards)"] = time.perf_counter() - start
    return cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="default | tiny | a checkpoint directory")
    parser.add_argument("--suite", default="default")
    parser.add_argument("--limit", type=int, default=None, help="probes per set (default: module sizes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cost", action="store_true", help="time one batch of each kind and stop")
    parser.add_argument("--json", default=None, help="write the timings here")
    args = parser.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    from tether.audit.base import AuditModel
    from tether.audit.suite import SUITE_LIMITS, resolve_suite, run_suite

    torch.set_num_threads(args.threads)
    console = Console()
    start = time.perf_counter()
    model, tokenizer = _load(args.model)
    load_seconds = time.perf_counter() - start
    audit_model = AuditModel("model", model, tokenizer, path=args.model)
    console.print(f"model {args.model} loaded in {load_seconds:.1f} s; {args.threads} threads; "
                  f"load average {os.getloadavg()[0]:.1f}")

    if args.cost:
        for what, seconds in measure_cost(audit_model).items():
            console.print(f"{what}: {seconds:.1f} s")
        return 0

    # one module at a time, so each gets its own wall and CPU seconds
    modules = resolve_suite(args.suite)
    limit = args.limit if args.limit is not None else SUITE_LIMITS.get(args.suite)
    wall, cpu, comparisons, errors = {}, {}, [], {}
    for name in modules:
        start, start_cpu = time.perf_counter(), time.process_time()
        run = run_suite(audit_model, audit_model, [name], limit=limit, log=console.print)
        wall[name], cpu[name] = time.perf_counter() - start, time.process_time() - start_cpu
        comparisons += run.comparisons
        errors.update(run.errors)
    table = Table(title=f"audit suite {args.suite!r} on {args.model} (against itself)")
    table.add_column("module")
    table.add_column("wall s", justify="right")
    table.add_column("CPU s", justify="right")
    table.add_column("metrics")
    for name in modules:
        names = ", ".join(c.name for c in comparisons if c.module == name)
        table.add_row(name.rsplit(".", 1)[-1], f"{wall[name]:.1f}", f"{cpu[name]:.1f}",
                      names or f"[red]{errors.get(name, '')[:60]}")
    total, total_cpu = sum(wall.values()), sum(cpu.values())
    table.add_row("[bold]total", f"[bold]{total:.1f}", f"[bold]{total_cpu:.1f}",
                  f"+ {load_seconds:.1f} s model loading")
    console.print(table)
    console.print(f"CPU seconds / threads = {total_cpu / args.threads:.0f} s: the wall time to expect "
                  "when the cores are not shared")
    drift = {c.name: c.change for c in comparisons if c.name.startswith("drift")}
    if any(value != 0.0 for value in drift.values()):
        console.print(f"[red]drift against itself should be exactly 0, got {drift}")
    console.print(f"load average now {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "suite": args.suite, "threads": args.threads, "limit": args.limit,
            "load_seconds": load_seconds, "total_seconds": total, "total_cpu_seconds": total_cpu,
            "seconds": wall, "cpu_seconds": cpu, "errors": errors, "loadavg": os.getloadavg()[0]},
            indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
