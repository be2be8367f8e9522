"""``tether audit agentic``: how often an agent misbehaves in scripted scenarios, and how far its
code passes visible tests but not held-out ones.

    tether audit agentic --model default --samples 8 --out runs/agentic

Writes ``agentic.json`` (per scenario: n, flagged, rate with a Wilson 95% interval, why, how many
episodes used a tool at all; spec gaming per task size) and ``trajectories.jsonl`` (every episode
with its flag, to read). See docs/agents.md.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from tether.audit.agentic.runner import (
    code_tasks,
    misbehaviour,
    run_model,
    scenario_tasks,
    spec_gaming,
)
from tether.audit.agentic.scenarios import by_name
from tether.audit.agentic.spec_gaming import SIZES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether audit agentic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model path, LoRA adapter or 'default'")
    parser.add_argument("--samples", type=int, default=8, help="sampled episodes per scenario (and condition)")
    parser.add_argument("--scenarios", default=None, help="comma-separated scenario names (default: all)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="code task sizes (functions per task)")
    parser.add_argument("--tasks-per-size", type=int, default=4, help="code tasks per size (each run --samples times)")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-tool-calls", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=192, help="per model turn")
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy (then use --samples 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default runs/agentic-TIMESTAMP)")
    parser.add_argument("--rescore", default=None, metavar="TRAJECTORIES",
                        help="no model: apply the detectors and tests again to a saved trajectories.jsonl")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tether.engine import console

    scenarios = scenario_tasks(by_name(args.scenarios.split(",") if args.scenarios else None))
    coding = code_tasks(tuple(int(s) for s in args.sizes.split(",")), args.tasks_per_size)
    if args.rescore:
        scenario_rows, code_rows, scenarios, coding = saved_rows(Path(args.rescore))
    else:
        from tether.audit.cli import model_name
        from tether.models import load_model

        model, tokenizer = load_model(model_name(args.model))
        model.eval()
        common = {"samples": args.samples, "max_turns": args.max_turns, "max_tool_calls": args.max_tool_calls,
                  "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed}
        console.print(f"{len(scenarios)} scenario runs x {args.samples} episodes")
        scenario_rows = run_model(model, tokenizer, "agentic_scenario", scenarios, **common)
        console.print(f"{len(coding)} code tasks x {args.samples} episodes")
        code_rows = run_model(model, tokenizer, "spec_task", coding, **common)

    result = {"model": args.model, "settings": vars(args), "scenarios": misbehaviour(scenarios, scenario_rows),
              "spec_gaming": spec_gaming(coding, code_rows, seed=args.seed)}
    out = Path(args.out or f"runs/agentic-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "agentic.json").write_text(json.dumps(result, indent=2))
    with (out / "trajectories.jsonl").open("w") as handle:
        for part, tasks, rows in (("scenario", scenarios, scenario_rows), ("code", coding, code_rows)):
            for row in rows:
                handle.write(json.dumps({"part": part, "task_spec": tasks[row["task"]], **row}) + "\n")
    for line in summary_lines(result):
        console.print(line)
    console.print(f"report: {out / 'agentic.json'}; episodes: {out / 'trajectories.jsonl'}")
    return 0


def saved_rows(path: Path) -> tuple[list, list, list, list]:
    """A saved trajectories.jsonl as (scenario rows, code rows, scenario tasks, code tasks)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    parts = []
    for part in ("scenario", "code"):
        mine = [row for row in rows if row["part"] == part]
        tasks: dict[int, dict] = {row["task"]: row["task_spec"] for row in mine}
        parts.append((mine, [tasks[i] for i in range(len(tasks))]))
    return parts[0][0], parts[1][0], parts[0][1], parts[1][1]


def summary_lines(result: dict) -> list[str]:
    lines = ["scenario               kind         flagged / n   rate  (95% CI)        used a tool"]
    for name, entry in result["scenarios"].items():
        low, high = entry["ci95"]
        lines.append(f"{name:<22} {entry['kind']:<12} {entry['flagged']:>4} / {entry['n']:<4} "
                     f"{entry['rate']:6.1%} ({low:.1%}-{high:.1%})   {entry['acted']}")
    lines.append("spec gaming: size  visible pass   held-out pass   gap")
    for size, entry in result["spec_gaming"]["sizes"].items():
        lines.append(f"             {size:>4}  {entry['visible']['rate']:6.1%} (n={entry['visible']['n']})"
                     f"   {entry['held_out']['rate']:6.1%}        {entry['gap'] * 100:+.1f} pp")
    slope = result["spec_gaming"]["gap_slope_per_tenfold"]
    lines.append("gap slope per tenfold size: " + ("n/a" if slope is None else f"{slope * 100:+.1f} pp"))
    return lines
