"""``tether demo consistency``: consistency training against jailbreak wrappers, audited before and after.

    tether demo consistency model.path=runs/safety-dpo/final [--seeds 3]

BCT's targets are the starting model's own answers to clean prompts, so it needs a model that
already refuses harmful requests: after ``tether demo`` (the safety job), point ``model.path`` at its
``final/`` (the LoRA adapter is merged into the base first). For each seed:

1. train ``recipes/consistency.yaml`` (the safety set's harmful and benign prompts under the
   ``train`` wrapper templates);
2. audit the starting model against the trained one with ``jailbreak_refusal`` (harmful requests
   under the ``heldout`` templates), ``refusal_calibration`` (clean harmful and benign prompts),
   ``sycophancy`` and ``drift``: each with a bootstrap interval, ``audit.json``/``audit.html`` in
   the run folder;

then a table of every metric's change, per seed and as a mean with its spread over seeds,
``demo_results.json`` in the first seed's run folder's parent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.table import Table

from tether.algorithms.consistency import ConsistencyConfig, train_consistency
from tether.config import load_config
from tether.engine import console

RECIPE = Path(__file__).parent.parent / "recipes" / "consistency.yaml"
JAILBREAK = "tether.audit.metrics.jailbreak"
SUITE = [JAILBREAK, "tether.audit.metrics.refusal_calibration",
         "tether.audit.metrics.sycophancy", "tether.audit.metrics.drift"]


def run_consistency_demo(overrides: list[str], steps: int | None = None, eval_limit: int | None = None,
                         seeds: int = 1) -> dict:
    from tether.audit.base import AuditModel
    from tether.audit.metrics import load_probes
    from tether.audit.report import print_table, write_report
    from tether.audit.suite import run_suite
    from tether.models import load_model

    # jailbreak_refusal is what the job is for, so it reads every unsafe probe (112 x 5 held-out
    # wrappers = 560 answers, ~5 min a model on 2 cores): the audit's default 24 probes (120 answers)
    # leave about +-7 points of noise, and 8 probes left +-15, around a change of about 9 points.
    every_unsafe_probe = len(load_probes("refusal_unsafe"))
    extra = [f"train.max_steps={steps}"] if steps else []
    base_config = load_config(ConsistencyConfig, RECIPE, list(overrides) + extra)
    per_seed = []
    # The starting model is the same in every seed and the audit's answers are greedy: its results
    # are computed for the first seed and reused (drift, which reads both models, runs each time).
    baseline_cache: dict = {}
    for seed in range(base_config.train.seed, base_config.train.seed + seeds):
        config = load_config(ConsistencyConfig, RECIPE, list(overrides) + extra + [
            f"train.seed={seed}", f"train.run_name={base_config.train.run_name}-seed{seed}"])
        console.rule(f"seed {seed}: consistency training ({config.consistency.method})")
        started = time.perf_counter()
        final_dir = train_consistency(config)
        trained_at = time.perf_counter()

        console.rule(f"seed {seed}: audit, starting model vs trained")
        start, tokenizer = load_model(config.run_dir() / "merged_base" if (config.run_dir() / "merged_base").is_dir()
                                      else config.model.path)
        trained, _ = load_model(final_dir)
        run = run_suite(AuditModel("start", start.eval(), tokenizer, path=config.model.path),
                        AuditModel("trained", trained.eval(), tokenizer, path=str(final_dir)),
                        SUITE, limit=eval_limit, seed=seed, log=console.print, baseline_cache=baseline_cache,
                        module_limits=None if eval_limit is not None else {JAILBREAK: every_unsafe_probe})
        write_report(run, config.run_dir() / "audit", baseline=config.model.path, candidate=str(final_dir))
        print_table(run, [])
        per_seed.append({"seed": seed, "run": str(config.run_dir()), "errors": run.errors,
                         "seconds": {"train": round(trained_at - started, 1),
                                     "audit": round(time.perf_counter() - trained_at, 1)},
                         "metrics": {c.name: {"before": None if c.baseline is None else c.baseline.value,
                                              "after": c.candidate.value, "change": c.change,
                                              "change_ci": [c.change_ci.low, c.change_ci.high],
                                              "n": len(c.candidate.items)} for c in run.comparisons}})

    results = {"model": base_config.model.path, "method": base_config.consistency.method, "seeds": per_seed,
               "summary": summarize(per_seed)}
    out = Path(base_config.train.output_dir) / f"{base_config.train.run_name}-demo_results.json"
    out.write_text(json.dumps(results, indent=2))
    _print_summary(results)
    console.print(f"results in {out}; per-seed audits in each run's audit/ folder")
    return results


def summarize(per_seed: list[dict]) -> dict:
    """Per metric: mean before, mean after, mean change and its standard deviation over seeds
    (NaN where a metric had no evidence in some seed: it propagates instead of hiding)."""
    summary = {}
    for name in per_seed[0]["metrics"]:
        rows = [seed["metrics"][name] for seed in per_seed if name in seed["metrics"]]
        changes = torch.tensor([float(row["change"]) for row in rows], dtype=torch.float64)
        befores = [float(row["before"]) for row in rows if row["before"] is not None]
        summary[name] = {"before": sum(befores) / len(befores) if befores else None,
                         "after": sum(float(row["after"]) for row in rows) / len(rows),
                         "change": changes.mean().item(),
                         "change_sd": changes.std().item() if len(rows) > 1 else None,
                         "seeds": len(rows)}
    return summary


def _print_summary(results: dict) -> None:
    table = Table(title=f"consistency training ({results['method']}), mean over {len(results['seeds'])} seed(s)")
    for column in ("metric", "before", "after", "change", "sd over seeds", "per-seed 95% intervals of the change"):
        table.add_column(column)
    for name, row in results["summary"].items():
        intervals = ", ".join(f"[{s['metrics'][name]['change_ci'][0]:+.3f}, {s['metrics'][name]['change_ci'][1]:+.3f}]"
                              for s in results["seeds"] if name in s["metrics"])
        table.add_row(name, "-" if row["before"] is None else f"{row['before']:.3f}", f"{row['after']:.3f}",
                      f"{row['change']:+.3f}", "-" if row["change_sd"] is None else f"{row['change_sd']:.3f}",
                      intervals)
    console.print(table)
