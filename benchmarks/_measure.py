"""Measurement helpers shared by the side-by-side benchmarks: child processes, memory, tables.

Each trainer under test runs in its own fresh Python process, so its peak memory is its own:
the parent starts the child and reaps it with ``os.wait4``, whose rusage is that one child's
(``ru_maxrss``: the largest resident set it ever had, imports and model loading included).
Inside a child, ``RssSampler`` watches the resident set during the timed span only, which shows
how much of the peak the training itself adds on top of the loaded model.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MB = 1024 * 1024


def maxrss_mb(usage: resource.struct_rusage) -> float:
    """``ru_maxrss`` in MiB (Linux reports kibibytes, macOS bytes)."""
    return usage.ru_maxrss / (MB if sys.platform == "darwin" else 1024)


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB (``/proc/self/statm`` on Linux)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES / MB
    except OSError:  # not Linux: the peak so far is the best cheap stand-in
        return maxrss_mb(resource.getrusage(resource.RUSAGE_SELF))


class RssSampler:
    """Largest resident set seen while the block runs, sampled every ``interval`` seconds.

    Reading ``/proc/self/statm`` takes microseconds, so sampling every 50 ms costs well under
    1% of one core. A spike shorter than the interval can be missed; ``ru_maxrss`` cannot miss it
    but covers the whole process life, so a benchmark reports both.
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.start_mb = 0.0
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def start(self) -> RssSampler:
        self.start_mb = self.peak_mb = current_rss_mb()
        self._thread = threading.Thread(target=self._watch, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class ChildRun:
    returncode: int
    wall_s: float  # the whole child: interpreter start, imports, loading, training, exit
    maxrss_mb: float  # that child's own peak resident set (from wait4)


def run_child(argv: list[str], *, env: dict[str, str] | None = None,
              timeout_s: float | None = None) -> ChildRun:
    """Run ``argv`` to completion (output goes to this terminal) and return its own peak RSS.

    ``os.wait4`` reaps exactly this child and returns its rusage, unlike
    ``getrusage(RUSAGE_CHILDREN)``, which is the maximum over every child reaped so far.
    """
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env)
    timer = threading.Timer(timeout_s, process.kill) if timeout_s else None
    if timer is not None:
        timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        if timer is not None:
            timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait
    return ChildRun(process.returncode, time.perf_counter() - started, maxrss_mb(usage))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant places, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def format_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (readable as plain text too), cells formatted with ``fmt``."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def environment() -> dict[str, str]:
    """Versions and machine facts worth keeping beside the numbers."""
    import platform

    facts = {"python": platform.python_version(), "machine": platform.machine(),
             "cpus": str(os.cpu_count()), "load_avg_1m": f"{os.getloadavg()[0]:.2f}"}
    for package in ("torch", "transformers", "peft", "trl", "accelerate"):
        try:
            from importlib.metadata import version

            facts[package] = version(package)
        except Exception:  # not installed: leave it out
            pass
    return facts


def child_env(threads: int) -> dict[str, str]:
    """The environment every benchmark child gets: fixed thread counts, fully offline."""
    env = dict(os.environ)
    # Idle OpenMP threads sleep instead of spinning. On a machine whose cores other jobs share,
    # a spinning barrier waits for a descheduled sibling thread and a 2-thread forward pass ran
    # 2-5x slower than with 1 thread; passive waiting removes most of that noise. A value
    # already in the environment wins.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                     env.get("PYTHONPATH")])),
    })
    return env


def side_by_side(script: str, args, prepare, compare, ratios, *, title: str, ok_key: str) -> int:
    """The driver both TRL benchmarks share.

    ``prepare(args, work_dir) -> spec`` writes the common inputs; each name in ``args.order``
    then runs ``script --child NAME --spec FILE`` in a fresh process, one after the other, and
    its result JSON gets the child's peak RSS, wall time and load averages. ``compare(spec,
    results) -> (report, ok)`` prints the comparison; ``ratios(results) -> dict`` goes in the
    ``--json`` file under ``ratios``, with ``ok`` under ``ok_key``. Exit status: 0 when the
    two runs did the same job (``ok``), the failing child's code when one fails.
    """
    import json
    import tempfile

    temp = None if args.work_dir else tempfile.TemporaryDirectory(prefix=Path(script).stem + "-")
    work_dir = Path(args.work_dir or temp.name).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        spec = prepare(args, work_dir)
        print(title.format(spec=spec) + f" OMP_WAIT_POLICY={child_env(args.threads)['OMP_WAIT_POLICY']}", flush=True)
        results: dict[str, dict] = {}
        for name in args.order:
            child_spec = {**spec, "result_path": str(work_dir / f"result-{name}.json")}
            spec_path = work_dir / f"spec-{name}.json"
            spec_path.write_text(json.dumps(child_spec, indent=2))
            load_before = os.getloadavg()[0]
            print(f"\n=== {name} (load average {load_before:.2f}) ===", flush=True)
            child = run_child([sys.executable, script, "--child", name, "--spec", str(spec_path)],
                              env=child_env(args.threads))
            if child.returncode != 0:
                print(f"{name} failed with exit code {child.returncode}", file=sys.stderr)
                return child.returncode or 1
            results[name] = json.loads(Path(child_spec["result_path"]).read_text())
            results[name].update(maxrss_mb=child.maxrss_mb, process_wall_s=child.wall_s,
                                 load_avg_before=load_before, load_avg_after=os.getloadavg()[0])
        report, ok = compare(spec, results)
        print("\n" + report)
        if args.json:
            payload = {"spec": {k: v for k, v in spec.items() if k != "work_dir"},
                       "environment": environment(), "results": results,
                       "ratios": ratios(results), ok_key: ok}
            Path(args.json).write_text(json.dumps(payload, indent=2))
            print(f"results written to {args.json}")
        return 0 if ok else 1
    finally:
        if temp is not None:
            temp.cleanup()
