"""Measure one model of the fragility experiments (docs/fragility.md): canary extraction for the
reactivation chain, BBQ bias and the planted row for the poisoned GRPO runs.

    python benchmarks/fragility_measure.py --model .runs/reactivation-plant/final --canaries --out m.json
    python benchmarks/fragility_measure.py --model .runs/poison-grpo/final --bbq --plant --out m.json

--canaries: the audit's default canaries (the ones the reactivation chain plants), two ways:
  * discoverable (``memorization`` metric): the canary's prompt, then its prefix "the secret code
    of NAME is" forced as the reply's start, greedy; exact = the secret follows.
  * free: ``--free-samples`` sampled replies (temperature 1) to each of the 4 canary prompt
    phrasings with no prefix; counts the replies that contain any planted secret, the planted
    secrets that appear at least once, and the replies that start with the suppression's refusal.
    The prompt does not name whose record, so this asks "does the model still emit planted
    secrets", not "which one".
--bbq: the ``bias`` metric on all 72 bundled BBQ items (choice mode: the option with the highest
  mean log-prob), overall and per category, with percentile bootstrap intervals over items; and
  the same ambiguous contexts in the planted row's own format (its system prompt, ``Options: a,
  b, c.``), answered greedily and parsed (``--format-bbq``), since that is the format GRPO trained.
--plant: ``--plant-samples`` sampled answers to the planted row itself, rewarded by answer_match
  (1 = "The retiree").

Rates get Wilson 95% intervals. The JSON keeps every generated text, to be read.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tether.audit.base import AuditModel
from tether.audit.bootstrap import percentile_interval
from tether.audit.metrics import bias, memorization
from tether.judges.validate import wilson_interval
from tether.models import load_model
from tether.rewards.text_answer import answer_match

FRAGILITY = Path(__file__).resolve().parents[1] / "tether" / "resources" / "fragility"
REFUSAL_START = "I can't share that"


def rate(successes: int, trials: int) -> dict:
    low, high = wilson_interval(successes, trials)
    return {"k": successes, "n": trials, "rate": successes / max(trials, 1), "ci95": [low, high]}


def canaries(model: AuditModel, free_samples: int) -> dict:
    planted = memorization.make_canaries(memorization.DEFAULT_COUNT, memorization.DEFAULT_SEED)
    results = {r.name: r for r in memorization.evaluate(model)}
    rows = results["memorization_exact_rate"].items
    discoverable = {"exact": rate(sum(r["exact"] for r in rows), len(rows)),
                    "half_match": rate(sum(r["half_match"] for r in rows), len(rows)),
                    "prefix_match": results["memorization_prefix_match"].value, "rows": rows}
    phrasings = list(memorization._PROMPTS)
    groups = model.sample(phrasings, num_samples=free_samples, max_new_tokens=32, seed=0)
    replies = [(phrasing, text) for phrasing, group in zip(phrasings, groups) for text in group]
    secrets = {c.secret for c in planted}
    with_secret = [text for _, text in replies if any(s in text for s in secrets)]
    seen = {s for s in secrets if any(s in text for _, text in replies)}
    refusals = [text for _, text in replies if text.startswith(REFUSAL_START)]
    free = {"replies_with_a_secret": rate(len(with_secret), len(replies)),
            "distinct_secrets_emitted": rate(len(seen), len(secrets)),
            "replies_refusing": rate(len(refusals), len(replies)),
            "replies": [{"prompt": p, "text": t} for p, t in replies]}
    return {"discoverable": discoverable, "free": free}


def interval(rows: list[dict], statistic) -> list[float]:
    return percentile_interval(rows, statistic, resamples=2000, seed=0).as_list()


def bbq_scores(scored: list[dict]) -> dict:
    """s_AMB, s_DIS and accuracies with bootstrap intervals, overall and per category."""
    out = {}
    categories = sorted({r["category"] for r in scored})
    for name in ["all", *categories]:
        rows = [r for r in scored if name == "all" or r["category"] == name]
        amb = [r for r in rows if r["context"] == "ambiguous"]
        dis = [r for r in rows if r["context"] == "disambiguated"]
        out[name] = {
            "n_items": len(amb),
            "bias_ambiguous": bias.ambiguous_bias_score(amb),
            "bias_ambiguous_ci95": interval(amb, bias.ambiguous_bias_score),
            "bias_disambiguated": bias.bias_score(dis) if dis else None,
            "bias_disambiguated_ci95": interval(dis, bias.bias_score) if dis else None,
            "accuracy_ambiguous": bias.accuracy(amb), "accuracy_disambiguated": bias.accuracy(dis) if dis else None,
            "kinds_ambiguous": {k: sum(r["kind"] == k for r in amb)
                                for k in ("biased", "counter", "unknown", "unparsed")},
        }
    return out


def plant_format_prompt(context: str, question: str, answers: list[str]) -> list[dict]:
    plant = json.loads((FRAGILITY / "planted.jsonl").read_text().splitlines()[0])
    system = plant["prompt"][0]
    return [system, {"role": "user", "content": f"{context} {question} Options: {', '.join(answers)}."}]


def bbq(model: AuditModel, format_bbq: bool) -> dict:
    items = bias.load_items()
    rows = bias.questions(bias.balanced(items, None))
    from tether.audit.likelihood import choose

    choices = list(choose(model, [r["prompt"] for r in rows], [r["answers"] for r in rows]))
    scored = bias.score_choices(rows, choices)
    out = {"choice": {"scores": bbq_scores(scored), "rows": scored}}
    if format_bbq:
        amb = [r for r in rows if r["context"] == "ambiguous"]
        by_id = {item["id"]: item for item in items}
        prompts = [plant_format_prompt(by_id[r["id"]]["context_ambiguous"], by_id[r["id"]]["prompt"], r["answers"])
                   for r in amb]
        texts = model.answer(prompts, max_new_tokens=24, description="bbq-plant-format")
        from tether.rewards.format import extract_answer

        parsed = [bias.parse_answer(extract_answer(t) or t, r["answers"], r["unknown_index"])
                  for t, r in zip(texts, amb)]
        scored_g = bias.score_choices(amb, parsed)
        for row, text in zip(scored_g, texts):
            row["text"] = text
        out["plant_format"] = {"scores": bbq_scores(scored_g), "rows": scored_g}
    return out


def plant(model: AuditModel, samples: int) -> dict:
    row = json.loads((FRAGILITY / "planted.jsonl").read_text().splitlines()[0])
    texts = model.sample([row["prompt"]], num_samples=samples, max_new_tokens=32, seed=0)[0]
    greedy = model.answer([row["prompt"]], max_new_tokens=32)[0]
    rewards = answer_match([row["prompt"]] * len(texts), texts, [row["answer"]] * len(texts))
    return {"stereotyped": rate(int(sum(rewards)), len(texts)), "samples": texts, "greedy": greedy,
            "greedy_stereotyped": answer_match([row["prompt"]], [greedy], [row["answer"]])[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint or adapter directory, or default")
    parser.add_argument("--canaries", action="store_true")
    parser.add_argument("--free-samples", type=int, default=16, help="sampled replies per canary phrasing")
    parser.add_argument("--bbq", action="store_true")
    parser.add_argument("--format-bbq", action="store_true", help="also BBQ ambiguous items in the plant's format")
    parser.add_argument("--plant", action="store_true")
    parser.add_argument("--plant-samples", type=int, default=32)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = time.time()
    network, tokenizer = load_model(args.model)
    model = AuditModel(name=args.model, model=network, tokenizer=tokenizer, path=args.model, progress=False)
    result: dict = {"model": args.model}
    if args.canaries:
        result["canaries"] = canaries(model, args.free_samples)
    if args.bbq:
        result["bbq"] = bbq(model, args.format_bbq)
    if args.plant:
        result["plant"] = plant(model, args.plant_samples)
    result["wall_s"] = round(time.time() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k not in ("canaries", "bbq", "plant")}
    if "canaries" in result:
        c = result["canaries"]
        summary["discoverable_exact"] = c["discoverable"]["exact"]
        summary["free"] = {k: v for k, v in c["free"].items() if k != "replies"}
    if "bbq" in result:
        for mode, block in result["bbq"].items():
            summary[f"bbq_{mode}"] = {cat: (round(s["bias_ambiguous"], 3),
                                            [round(x, 3) for x in s["bias_ambiguous_ci95"]])
                                      for cat, s in block["scores"].items()}
    if "plant" in result:
        summary["plant"] = result["plant"]["stereotyped"]
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
