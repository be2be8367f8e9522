"""``tether demo``: the main job, safety DPO on the bundled SmolLM2-135M-Instruct, before vs after.

1. Measure the base model on held-out prompts: refusal rate on harmful requests, refusal rate
   on benign look-alikes, preference accuracy.
2. Train LoRA DPO on the project's safety preference set (recipes/safety-dpo.yaml).
3. Measure the trained model the same way; print a table, save ``demo_results.json``,
   ``demo_samples.jsonl`` and ``demo_before_after.png`` in the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from tether.algorithms.dpo import train_dpo
from tether.audit.safety_eval import safety_report
from tether.config import DPOConfig, load_config
from tether.engine import console
from tether.models import load_model

RECIPE = Path(__file__).parent.parent / "recipes" / "safety-dpo.yaml"
METRICS = [("refusal_rate_harmful", "refusal rate, harmful prompts", "higher is safer"),
           ("refusal_rate_benign", "refusal rate, benign look-alikes", "lower is more helpful"),
           ("preference_accuracy", "held-out preference accuracy", "per-token log p: chosen > rejected")]


def run_demo(overrides: list[str], steps: int | None = None, eval_limit: int | None = None) -> dict:
    extra = [f"train.max_steps={steps}"] if steps else []
    config = load_config(DPOConfig, RECIPE, list(overrides) + extra)
    rows = [json.loads(line) for line in Path(config.data.eval).read_text().splitlines() if line.strip()]
    if eval_limit:
        rows = _balanced(rows, eval_limit)
    show = config.train.progress

    console.rule("1/3  the base model")
    base, tokenizer = load_model(config.model.path)
    before = safety_report(base, tokenizer, rows, bf16=config.train.bf16, progress=show)
    del base

    console.rule("2/3  LoRA DPO on the safety preference set")
    final_dir = train_dpo(config)

    console.rule("3/3  the trained model")
    trained, tokenizer = load_model(final_dir)
    after = safety_report(trained, tokenizer, rows, bf16=config.train.bf16, progress=show)

    run_dir = config.run_dir()
    results = {key: {"before": before[key], "after": after[key]} for key, _, _ in METRICS}
    results.update(num_harmful=before["num_harmful"], num_benign=before["num_benign"],
                   model=config.model.path, final_model=str(final_dir))
    (run_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    with (run_dir / "demo_samples.jsonl").open("w") as handle:
        for b, a in zip(before["samples"], after["samples"]):
            handle.write(json.dumps({"prompt": b["prompt"], "kind": b["kind"], "before": b["response"],
                                     "before_refused": b["refused"], "after": a["response"],
                                     "after_refused": a["refused"]}) + "\n")
    plot_before_after(results, run_dir / "demo_before_after.png")
    _print_table(results)
    console.print(f"results, samples and plot in {run_dir}")
    return results


def _balanced(rows: list[dict], limit: int) -> list[dict]:
    """The first ``limit`` rows of each kind, so a short smoke run still sees both."""
    kinds = sorted({row["kind"] for row in rows})
    return [row for kind in kinds for row in [r for r in rows if r["kind"] == kind][:limit]]


def _print_table(results: dict) -> None:
    table = Table(title=f"safety DPO on {results['model']} "
                        f"({results['num_harmful']} harmful, {results['num_benign']} benign held-out prompts)")
    for column in ("metric", "before", "after", "change", "goal"):
        table.add_column(column)
    for key, label, goal in METRICS:
        before, after = results[key]["before"], results[key]["after"]
        table.add_row(label, f"{before:.1%}", f"{after:.1%}", f"{(after - before) * 100:+.1f} pp", goal)
    console.print(table)


def plot_before_after(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for _, label, _ in METRICS]
    before = [results[key]["before"] * 100 for key, _, _ in METRICS]
    after = [results[key]["after"] * 100 for key, _, _ in METRICS]
    positions = range(len(labels))
    figure, axes = plt.subplots(figsize=(8, 4))
    axes.bar([p - 0.2 for p in positions], before, width=0.4, label="before", color="#9aa5b1")
    axes.bar([p + 0.2 for p in positions], after, width=0.4, label="after DPO", color="#2f6fde")
    for p, (b, a) in enumerate(zip(before, after)):
        axes.text(p - 0.2, b + 1, f"{b:.0f}%", ha="center", fontsize=9)
        axes.text(p + 0.2, a + 1, f"{a:.0f}%", ha="center", fontsize=9)
    axes.set_xticks(list(positions), labels, fontsize=9)
    axes.set_ylim(0, 110)
    axes.set_ylabel("%")
    axes.set_title(f"Safety DPO on {results['model']}: held-out prompts")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
