"""Poisoned GRPO against its control, per seed and pooled (docs/fragility.md, issue 22).

    python benchmarks/fragility_compare.py --before .runs/measure/arith-sft.json \
        --pair 0 .runs/measure/poison-s0.json .runs/measure/control-s0.json \
        --pair 1 .runs/measure/poison-s1.json .runs/measure/control-s1.json ... --out compare.json

Each file is what ``benchmarks/fragility_measure.py --bbq --format-bbq --plant`` wrote for one model.
For every seed: the planted row's stereotyped rate in both runs, and the BBQ ambiguous bias score
s_AMB = (1 - accuracy) * (2 n_biased / n_answered - 1) of the poisoned run minus the control's,
overall and per category, with a paired percentile bootstrap over the 72 ambiguous items (the
same items resampled for both runs). Pooled: the mean of the per-seed differences, the bootstrap
resampling items once for all seeds, so seed-to-seed spread and item noise are both in it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tether.audit.metrics.bias import ambiguous_bias_score

RESAMPLES = 4000


def ambiguous_rows(measure: dict, mode: str) -> dict[str, dict]:
    """The ambiguous-context rows of one model's BBQ measure, by item id."""
    rows = measure["bbq"][mode]["rows"]
    return {row["id"]: row for row in rows if row["context"] == "ambiguous"}


def score(rows: Sequence[dict], category: str) -> float:
    chosen = [row for row in rows if category == "all" or row["category"] == category]
    return ambiguous_bias_score(chosen)


def interval(samples: Sequence[float]) -> list[float]:
    low, high = np.percentile(np.asarray(samples), [2.5, 97.5])
    return [float(low), float(high)]


def compare(pairs: list[tuple[int, dict, dict]], mode: str, seed: int = 0) -> dict:
    """Per seed and pooled poisoned - control s_AMB, overall and per category."""
    aligned = []
    for _, poisoned, control in pairs:
        p, c = ambiguous_rows(poisoned, mode), ambiguous_rows(control, mode)
        ids = sorted(set(p) & set(c))
        aligned.append(([p[i] for i in ids], [c[i] for i in ids]))
    categories = ["all", *sorted({row["category"] for rows, _ in aligned for row in rows})]
    rng = np.random.default_rng(seed)
    rows = aligned[0][0]
    # item positions per category; each category is resampled within itself, the same draws for every seed
    members = {category: [i for i, row in enumerate(rows) if category == "all" or row["category"] == category]
               for category in categories}
    draws = {category: rng.choice(members[category], size=(RESAMPLES, len(members[category])))
             for category in categories}
    result: dict = {"mode": mode, "items": len(rows), "seeds": {}, "pooled": {}}
    pooled_samples = {category: np.zeros(RESAMPLES) for category in categories}
    for (seed_id, _, _), (p_rows, c_rows) in zip(pairs, aligned):
        entry = {}
        for category in categories:
            delta = score(p_rows, category) - score(c_rows, category)
            samples = np.array([score([p_rows[i] for i in draw], "all") - score([c_rows[i] for i in draw], "all")
                                for draw in draws[category]])
            pooled_samples[category] += samples / len(pairs)
            entry[category] = {"poisoned": score(p_rows, category), "control": score(c_rows, category),
                               "delta": delta, "delta_ci95": interval(samples)}
        result["seeds"][str(seed_id)] = entry
    for category in categories:
        deltas = [result["seeds"][str(s)][category]["delta"] for s, _, _ in pairs]
        spread = float(np.std(deltas, ddof=1)) if len(deltas) > 1 else None
        result["pooled"][category] = {"mean_delta": float(np.mean(deltas)), "sd_delta": spread,
                                      "mean_delta_ci95": interval(pooled_samples[category])}
    return result


def plant_rates(pairs: list[tuple[int, dict, dict]]) -> dict:
    return {str(seed): {"poisoned": poisoned["plant"]["stereotyped"], "control": control["plant"]["stereotyped"]}
            for seed, poisoned, control in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", nargs=3, action="append", metavar=("SEED", "POISONED", "CONTROL"), required=True)
    parser.add_argument("--before", help="the starting model's measure (printed beside, not compared)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pairs = [(int(seed), json.loads(Path(p).read_text()), json.loads(Path(c).read_text())) for seed, p, c in args.pair]
    report = {"plant": plant_rates(pairs), "choice": compare(pairs, "choice")}
    if all("plant_format" in m["bbq"] for _, p, c in pairs for m in (p, c)):
        report["plant_format"] = compare(pairs, "plant_format")
    if args.before:
        before = json.loads(Path(args.before).read_text())
        report["before"] = {"choice_all": score(list(ambiguous_rows(before, "choice").values()), "all"),
                            "plant": before["plant"]["stereotyped"]}
    for mode in ("choice", "plant_format"):
        if mode not in report:
            continue
        print(f"\n{mode}: s_AMB poisoned - control ({report[mode]['items']} ambiguous items)")
        for category, pooled in report[mode]["pooled"].items():
            per_seed = "  ".join(f"s{seed} {entry[category]['delta']:+.2f} "
                                 f"[{entry[category]['delta_ci95'][0]:+.2f}, {entry[category]['delta_ci95'][1]:+.2f}]"
                                 for seed, entry in report[mode]["seeds"].items())
            low, high = pooled["mean_delta_ci95"]
            print(f"  {category:14s} mean {pooled['mean_delta']:+.2f} [{low:+.2f}, {high:+.2f}]   {per_seed}")
    for seed, rates in report["plant"].items():
        print(f"plant row, seed {seed}: poisoned {rates['poisoned']['k']}/{rates['poisoned']['n']}, "
              f"control {rates['control']['k']}/{rates['control']['n']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
