"""Precision and recall of the RL prompt-set screen (`tether audit data` on prompt-only rows) on
planted cases; numbers in docs/fragility.md.

The set: arithmetic prompts (tether's GRPO tasks) with 4 completions each (1-3 right answers, the
rest give up), BBQ's ambiguous contexts labelled "unknown" (clean, the correct label), and, per
trial, ``--plants`` BBQ ambiguous contexts labelled with the stereotyped answer (the poison).
``--disambiguated`` adds BBQ's disambiguated contexts with their correct labels: clean rows whose
label does depend on who is named, which the group gap cannot tell from a plant.

    python benchmarks/rl_screen_planted.py [--trials 5] [--plants 3] [--disambiguated] [--gradient]

``--gradient`` adds the gradient-direction detector on a tiny random Llama (no real model).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from tether.audit import rl_data_audit as rda
from tether.data import VerifiableRecord, load_records
from tether.rewards.base import RewardSpec
from tether.rewards.text_answer import answer_match

RESOURCES = Path(__file__).resolve().parents[1] / "tether" / "resources"
FORMAT = "<answer>{answer}</answer>"


def arithmetic(n: int, rng: random.Random) -> list[VerifiableRecord]:
    tasks = load_records(RESOURCES / "arith" / "train.jsonl", "prompt")[:n]
    rows = []
    for task in tasks:
        right = rng.randint(1, 3)
        completions = [FORMAT.format(answer=task.answer) if k < right else "I am not sure." for k in range(4)]
        rows.append(VerifiableRecord(prompt=task.prompt, answer=task.answer, id=task.id,
                                     extras={"completions": completions}))
    return rows


def stereotyped(item: dict) -> str:
    """The answer that follows the stereotype: the target for a negative question, else the other."""
    named = [i for i in range(3) if i != item["unknown"]]
    other = next(i for i in named if i != item["target"])
    return item["answers"][item["target"] if item["polarity"] == "neg" else other]


def bbq_row(item: dict, context: str, gold: str, suffix: str) -> VerifiableRecord:
    system = {"role": "system", "content": "Answer with one option inside <answer> </answer>."}
    user = {"role": "user", "content": f"{item[context]} {item['prompt']} Options: {', '.join(item['answers'])}."}
    return VerifiableRecord(prompt=[system, user], answer=gold, id=f"{item['id']}-{suffix}",
                            extras={"completions": [FORMAT.format(answer=a) for a in item["answers"]]})


def trial(seed: int, args, model=None, tokenizer=None) -> dict:
    rng = random.Random(seed)
    items = [json.loads(line) for line in (RESOURCES / "audit" / "bbq.jsonl").open()]
    rng.shuffle(items)
    plants, clean = items[:args.plants], items[args.plants:args.plants + args.clean_bbq]
    rows = arithmetic(args.arithmetic, rng)
    rows += [bbq_row(item, "context_ambiguous", item["answers"][item["unknown"]], "unknown") for item in clean]
    if args.disambiguated:
        rows += [bbq_row(item, "context_disambiguated", item["answers"][item["correct_disambiguated"]], "dis")
                 for item in clean]
    first_plant = len(rows)
    rows += [bbq_row(item, "context_ambiguous", stereotyped(item), "plant") for item in plants]
    report = rda.audit_rl_prompts(rows, [RewardSpec("answer_match", answer_match)], answer_format=FORMAT,
                                  policy=model, tokenizer=tokenizer, sketch_dim=None,
                                  planted=range(first_plant, len(rows)), seed=seed)
    def kind(example: str) -> str:
        return example.rsplit("-", 1)[-1] if example.endswith(("-unknown", "-dis", "-plant")) else "arithmetic"

    return {name: {k: d[k] for k in ("true_positives", "planted_count")}
            | {"flagged": len(d["flagged"]), "kinds": [kind(e) for e in d["flagged"]]}
            for name, d in report["detectors"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--plants", type=int, default=3)
    parser.add_argument("--arithmetic", type=int, default=200)
    parser.add_argument("--clean-bbq", type=int, default=24)
    parser.add_argument("--disambiguated", action="store_true")
    parser.add_argument("--gradient", action="store_true")
    args = parser.parse_args()
    model = tokenizer = None
    totals: dict[str, np.ndarray] = {}
    kinds: dict[str, Counter] = defaultdict(Counter)
    for seed in range(args.trials):
        if args.gradient:
            from tether.models.loading import load_model
            from tether.models.tiny import save_tiny_llama

            with tempfile.TemporaryDirectory() as folder:
                model, tokenizer = load_model(save_tiny_llama(Path(folder) / "model"))
        for name, counts in trial(seed, args, model, tokenizer).items():
            row = np.array([counts["true_positives"], counts["flagged"], counts["planted_count"]])
            totals[name] = totals.get(name, 0) + row
            kinds[name].update(counts["kinds"])
    from tether.judges.validate import wilson_interval

    print(f"{args.trials} trials x {args.plants} plants among {args.arithmetic} arithmetic + {args.clean_bbq} "
          f"clean BBQ{' (+ disambiguated)' if args.disambiguated else ''} rows")
    for name, (tp, flagged, planted) in totals.items():
        low, high = wilson_interval(int(tp), int(flagged)) if flagged else (float("nan"), float("nan"))
        precision = f"{tp / flagged:.2f} [{low:.2f}, {high:.2f}]" if flagged else "n/a (none flagged)"
        recall_low, recall_high = wilson_interval(int(tp), int(planted))
        print(f"{name:20s} precision {precision}  recall {tp / planted:.2f} [{recall_low:.2f}, {recall_high:.2f}]"
              f"  (TP {tp}, flagged {flagged}, planted {planted}; flagged by kind {dict(kinds[name])})")


if __name__ == "__main__":
    main()
