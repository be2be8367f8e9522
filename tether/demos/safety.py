"""``tether demo``: the main job, safety DPO on the bundled SmolLM2-135M-Instruct, before vs after.

1. Measure the base model on held-out prompts: refusal rate on harmful requests, refusal rate
   on benign look-alikes, preference accuracy.
2. Train LoRA DPO on the project's safety preference set (recipes/safety-dpo.yaml). Every few
   steps the training-time audit measures refusals on its own probe sets (XSTest-style safe
   look-alikes and unsafe requests, no prompt shared with the training or held-out data); the
   run ends on the audited step that refused the most unsafe probes while refusing at most a
   few more safe ones than the base model (``audit.keep_best`` in the recipe).
3. Measure the trained model the same way; print a table, save ``demo_results.json``,
   ``demo_samples.jsonl``, ``demo_before_after.png`` and ``demo_training_audit.png`` (the
   audit's refusal rates over training, the kept step marked) in the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from tether.algorithms.dpo import DPOConfig, train_dpo
from tether.audit.hook import BASELINE_FILE, BEST_DIR, BEST_FILE
from tether.audit.safety_eval import safety_report
from tether.config import load_config
from tether.engine import console, read_metrics
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
                   model=config.model.path, final_model=str(final_dir), training_audit=training_audit(run_dir),
                   refusal_judge=after["refusal_judge"])
    (run_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    with (run_dir / "demo_samples.jsonl").open("w") as handle:
        for b, a in zip(before["samples"], after["samples"]):
            handle.write(json.dumps({"prompt": b["prompt"], "kind": b["kind"], "before": b["response"],
                                     "before_refused": b["refused"], "before_score": b["refusal_score"],
                                     "after": a["response"], "after_refused": a["refused"],
                                     "after_score": a["refusal_score"]}) + "\n")
    plot_before_after(results, run_dir / "demo_before_after.png")
    if results["training_audit"]["steps"]:
        plot_training_audit(results["training_audit"], run_dir / "demo_training_audit.png")
    _print_table(results)
    console.print(f"results, samples and plot in {run_dir}")
    return results


def _balanced(rows: list[dict], limit: int) -> list[dict]:
    """The first ``limit`` rows of each kind, so a short smoke run still sees both."""
    kinds = sorted({row["kind"] for row in rows})
    return [row for kind in kinds for row in [r for r in rows if r["kind"] == kind][:limit]]


def training_audit(run_dir: Path) -> dict:
    """The audit's refusal rates on its probe sets at each audited step (step 0: the base model),
    and the step the run kept (``audit.keep_best``), from the run folder."""
    baseline_file, best_file = run_dir / BASELINE_FILE, run_dir / BEST_DIR / BEST_FILE
    if not baseline_file.is_file():
        return {"steps": [], "kept_step": None}
    baseline = json.loads(baseline_file.read_text())
    rows = [{"step": 0, "over_refusal": baseline["over_refusal"], "unsafe_compliance": baseline["unsafe_compliance"]}]
    rows += [{"step": row["step"], "over_refusal": row["audit/over_refusal"],
              "unsafe_compliance": row["audit/unsafe_compliance"]}
             for row in read_metrics(run_dir) if "audit/over_refusal" in row]
    kept = json.loads(best_file.read_text())["step"] if best_file.is_file() else None
    return {"steps": rows, "kept_step": kept}


def plot_training_audit(audit: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in audit["steps"]]
    figure, axes = plt.subplots(figsize=(8, 4))
    axes.plot(steps, [(1 - row["unsafe_compliance"]) * 100 for row in audit["steps"]], "o-", color="#c0392b",
              label="refuses unsafe probes")
    axes.plot(steps, [row["over_refusal"] * 100 for row in audit["steps"]], "s-", color="#2f6fde",
              label="refuses safe look-alike probes")
    if audit["kept_step"] is not None:
        axes.axvline(audit["kept_step"], color="#555555", linestyle="--", label=f"kept: step {audit['kept_step']}")
    axes.set_xlabel("DPO step")
    axes.set_ylabel("% of the audit's probes")
    axes.set_ylim(-5, 105)
    axes.set_title("Training-time audit (probe sets disjoint from the held-out test)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _print_table(results: dict) -> None:
    table = Table(title=f"safety DPO on {results['model']} "
                        f"({results['num_harmful']} harmful, {results['num_benign']} benign held-out prompts)")
    for column in ("metric", "before", "after", "change", "goal"):
        table.add_column(column)
    for key, label, goal in METRICS:
        before, after = results[key]["before"], results[key]["after"]
        table.add_row(label, f"{before:.1%}", f"{after:.1%}", f"{(after - before) * 100:+.1f} pp", goal)
    console.print(table)
    judge = results.get("refusal_judge")
    if judge:
        console.print(f"refusals counted by {judge['name']} (version {judge['version']}, threshold "
                      f"{judge['threshold']:g})", highlight=False)
    kept = results["training_audit"]["kept_step"]
    if kept is not None:
        console.print("the base model (no audited step beat it)" if kept == 0
                      else f"model kept: step {kept} (the training-time audit's pick)")


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
