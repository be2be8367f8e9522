"""What does a preference file reward, and which of its pairs look mislabelled?

    tether audit data prefs.jsonl [--tokenizer PATH] [--policy DIR --reference DIR --beta 0.1]
                                  [--reward NAME] [--plant-swaps K] [--out DIR]

A simplified, feature-based take on "What's In My Human Feedback?" (Movva et al., ICLR 2026): the
concepts are hand-written measures of a response instead of learned SAE features.

**Concept features** of each response (:func:`concept_features`): length (tokens with a tokenizer,
else words), refusal (the verdict of :func:`tether.judges.default_refusal_judge`, recorded in the
report as ``refusal_judge``), hedging phrases, agreement /
flattery phrases, markdown list items, headers and bold spans, and toxicity (alt-profanity-check's
probability >= 0.5, when the package is installed).

**Win rate** per concept: among pairs whose chosen and rejected responses differ in the concept,
the fraction where the chosen one has more of it, with a 95% Wilson interval. 0.5 means the labels
ignore the concept; a length win rate of 0.8 is length bias.

**Preference regression**: a logistic model of "which response is chosen" on the concepts, which
separates concepts that travel together (long answers also have more list items). Each pair enters
twice, symmetrically, as (d, y=1) and (-d, y=0) with d = phi(chosen) - phi(rejected),
phi = log(1 + feature) standardized by the spread of d, and no intercept (the order of a pair
carries no information). Weights are per standard deviation of the difference, so they compare
across concepts; the 95% intervals come from refitting on pairs resampled with replacement. A small
L2 penalty keeps the weights finite when the labels are separable.

**Suspicious pairs**, ranked by one of (strongest evidence first):

* ``implicit_reward`` (``--policy`` and ``--reference``, a DPO-trained policy and its reference):
  the DPO implicit reward margin beta * [(log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) -
  log pi_ref(y_r))]; a pair the trained policy still ranks the other way (strongly negative
  margin) went against what it learned from the rest of the data.
* ``reward`` (``--reward NAME``, any tether reward function, a reward model's scorer included):
  r(rejected) - r(chosen).
* ``heldout_concepts`` (always): cross-fitting. The pairs are split in 5 folds; a preference
  regression fitted on four folds scores the fifth, and a pair's suspicion is
  -log P(chosen preferred), so no pair judges itself.

``--plant-swaps K`` swaps chosen and rejected in K random pairs before the audit and reports where
the detectors rank them, with the AUROC of each detector's score against the planted labels: a
check that the detectors can see label noise in this data at all.

Writes ``audit_data.json`` and ``concept_win_rates.png`` to ``--out`` and prints tables.

A file of prompt-only rows (an RL prompt set) is screened instead by
:mod:`tether.audit.rl_data_audit` (reward outliers, gradient direction, group reward gaps), which
writes ``audit_rl_data.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tether.data import PreferenceRecord, load_records, read_rows
from tether.errors import TetherError
from tether.judges import Judge, decide, default_refusal_judge, describe
from tether.judges.rows import prompt_text
from tether.judges.validate import wilson_interval
from tether.rewards.base import completion_text

# ---- concept features --------------------------------------------------------------------------

HEDGES = ("i think", "i believe", "it seems", "it appears", "perhaps", "possibly", "probably", "might",
          "may be", "could be", "not sure", "it depends", "arguably", "generally", "in some cases",
          "to some extent", "likely", "i'm not certain", "i am not certain")
FLATTERY = ("great question", "good question", "excellent question", "you're right", "you are right",
            "you're absolutely right", "you are absolutely right", "good point", "great point",
            "i agree", "absolutely", "what a", "happy to help", "glad you asked", "brilliant",
            "you're correct", "you are correct", "fantastic", "wonderful")

_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\S", re.MULTILINE)
_HEADER = re.compile(r"^\s*#{1,6}\s+\S", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


def _count_phrases(text: str, phrases: Sequence[str]) -> int:
    lowered = text.lower().replace("\u2019", "'")
    return sum(len(re.findall(r"(?<!\w)" + re.escape(p) + r"(?!\w)", lowered)) for p in phrases)


def toxicity_scorer() -> Callable[[list[str]], list[float]] | None:
    """alt-profanity-check's offensive-language probability, or None when it is not installed."""
    try:
        from profanity_check import predict_prob
    except ImportError:
        return None
    return lambda texts: [float(p) for p in predict_prob(list(texts))]


def concept_features(texts: Sequence[str], *, prompts: Sequence[str] | None = None, tokenizer: Any = None,
                     toxicity: Callable[[list[str]], list[float]] | None = None,
                     refusal_judge: Judge | None = None) -> dict[str, np.ndarray]:
    """Concept name -> (N,) values for ``texts`` (answers to ``prompts``, when given). Length is
    ``length_tokens`` with a tokenizer, else ``length_words``; ``toxicity`` appears only when a
    scorer is given; refusal is ``refusal_judge``'s verdict (default: the default refusal judge)."""
    texts = list(texts)
    prompts = [""] * len(texts) if prompts is None else list(prompts)
    refusal_judge = refusal_judge or default_refusal_judge()
    if tokenizer is not None:
        length = ("length_tokens", [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts])
    else:
        length = ("length_words", [len(t.split()) for t in texts])
    features = {
        length[0]: length[1],
        "refusal": [float(flag) for flag in decide(refusal_judge, prompts, texts)],
        "hedging": [_count_phrases(t, HEDGES) for t in texts],
        "flattery": [_count_phrases(t, FLATTERY) for t in texts],
        "list_items": [len(_LIST_ITEM.findall(t)) for t in texts],
        "headers": [len(_HEADER.findall(t)) for t in texts],
        "bold": [len(_BOLD.findall(t)) for t in texts],
    }
    if toxicity is not None:
        # an indicator, like refusal: tiny probability differences between two clean answers
        # would otherwise make every pair "differ" in toxicity
        features["toxicity"] = [float(p >= 0.5) for p in toxicity(texts)]
    return {name: np.asarray(values, dtype=float) for name, values in features.items()}


def pair_features(records: Sequence[PreferenceRecord], *, tokenizer: Any = None,
                  toxicity: Callable | None = None,
                  refusal_judge: Judge | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Concept names and the (N, K) feature matrices of the chosen and rejected responses."""
    prompts = [prompt_text(r.prompt) for r in records]
    chosen = concept_features([completion_text(r.chosen) for r in records], prompts=prompts, tokenizer=tokenizer,
                              toxicity=toxicity, refusal_judge=refusal_judge)
    rejected = concept_features([completion_text(r.rejected) for r in records], prompts=prompts,
                                tokenizer=tokenizer, toxicity=toxicity, refusal_judge=refusal_judge)
    names = list(chosen)
    return names, np.stack([chosen[n] for n in names], 1), np.stack([rejected[n] for n in names], 1)


# ---- win rates ---------------------------------------------------------------------------------

def win_rates(names: Sequence[str], chosen: np.ndarray, rejected: np.ndarray) -> list[dict]:
    """Per concept: P(chosen has more | they differ), its Wilson interval, and the pair counts.

    Shape: chosen, rejected (N, K).
    """
    rows = []
    for k, name in enumerate(names):
        differ = chosen[:, k] != rejected[:, k]
        wins = int((chosen[differ, k] > rejected[differ, k]).sum())
        n = int(differ.sum())
        low, high = wilson_interval(wins, n)
        rows.append({"concept": name, "win_rate": wins / n if n else float("nan"), "low": low, "high": high,
                     "pairs_differing": n, "chosen_more": wins})
    return rows


# ---- preference regression ---------------------------------------------------------------------

def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1.0, iterations: int = 50) -> np.ndarray:
    """Weights w minimizing sum_i log(1 + exp(-s_i w.x_i)) + (l2 / 2)|w|^2, s_i = 2 y_i - 1, by Newton.

    Shape: x (M, K), y (M,) in {0, 1} -> w (K,).
    """
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-x @ w))  # (M,)
        gradient = x.T @ (p - y) + l2 * w  # (K,)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])  # (K, K)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def difference_design(chosen: np.ndarray, rejected: np.ndarray, scale: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """d = log1p(chosen) - log1p(rejected), divided by ``scale`` (default: the std of d per concept,
    1 where constant). Returns (d, scale). Shape: (N, K), (K,)."""
    d = np.log1p(np.maximum(chosen, 0)) - np.log1p(np.maximum(rejected, 0))
    if scale is None:
        scale = d.std(axis=0)
        scale[scale == 0] = 1.0
    return d / scale, scale


def symmetric_fit(d: np.ndarray, *, l2: float = 1.0) -> np.ndarray:
    """Logistic weights on the symmetric design [(d, 1), (-d, 0)]."""
    x = np.concatenate([d, -d])
    y = np.concatenate([np.ones(len(d)), np.zeros(len(d))])
    return fit_logistic(x, y, l2=l2)


def preference_regression(names: Sequence[str], chosen: np.ndarray, rejected: np.ndarray, *,
                          bootstrap: int = 200, seed: int = 0) -> list[dict]:
    """Weight and 95% bootstrap interval per concept, sorted by |weight|, largest first."""
    d, _ = difference_design(chosen, rejected)
    weights = symmetric_fit(d)
    rng = np.random.default_rng(seed)
    draws = np.array([symmetric_fit(d[rng.integers(0, len(d), len(d))]) for _ in range(bootstrap)]) \
        if bootstrap else np.full((1, len(names)), np.nan)
    rows = [{"concept": name, "weight": float(weights[k]),
             "low": float(np.percentile(draws[:, k], 2.5)), "high": float(np.percentile(draws[:, k], 97.5))}
            for k, name in enumerate(names)]
    return sorted(rows, key=lambda row: -abs(row["weight"]))


# ---- suspicious pairs --------------------------------------------------------------------------

def heldout_concept_suspicion(chosen: np.ndarray, rejected: np.ndarray, *, folds: int = 5,
                              seed: int = 0) -> np.ndarray:
    """-log P(chosen preferred) for each pair under a regression fitted on the other folds.

    Shape: (N, K), (N, K) -> (N,).
    """
    n = len(chosen)
    order = np.random.default_rng(seed).permutation(n)
    suspicion = np.zeros(n)
    for fold in range(min(folds, n)):
        held = order[fold::folds]
        train = np.setdiff1d(order, held)
        d_train, scale = difference_design(chosen[train], rejected[train])
        weights = symmetric_fit(d_train)
        d_held, _ = difference_design(chosen[held], rejected[held], scale)
        logits = d_held @ weights
        suspicion[held] = np.logaddexp(0.0, -logits)  # -log sigmoid(logit)
    return suspicion


def implicit_reward_margins(records: Sequence[PreferenceRecord], policy: str, reference: str, *,
                            beta: float = 0.1, max_length: int = 1024, batch_size: int = 8) -> np.ndarray:
    """beta * [(log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))] per pair.

    Shape: (N,).
    """
    from tether.algorithms.preference_pairs import PreferenceExamples, evaluation_batches, score_pairs
    from tether.data import encode_preference
    from tether.models import load_model

    def logratios(path: str) -> tuple[np.ndarray, np.ndarray]:
        model, tokenizer = load_model(path)
        examples = PreferenceExamples([encode_preference(r, tokenizer, max_length) for r in records])
        chosen, rejected = score_pairs(model, examples, tokenizer.pad_token_id,
                                       evaluation_batches(len(records), batch_size), average=False)
        return chosen.numpy(), rejected.numpy()

    policy_chosen, policy_rejected = logratios(policy)
    ref_chosen, ref_rejected = logratios(reference)
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def reward_margins(records: Sequence[PreferenceRecord], reward: str) -> np.ndarray:
    """r(chosen) - r(rejected) under a tether reward function (a built-in name or module:function)."""
    from tether.rewards.base import call_reward, trl_completions
    from tether.rewards.resolve import resolve_reward

    function = resolve_reward(reward)
    prompts = [r.prompt for r in records]
    chosen = call_reward(function, prompts, trl_completions(prompts, [r.chosen for r in records]), {})
    rejected = call_reward(function, prompts, trl_completions(prompts, [r.rejected for r in records]), {})
    return np.array([(c if c is not None else np.nan) - (r if r is not None else np.nan)
                     for c, r in zip(chosen, rejected)], dtype=float)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / (n+ n-))."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    positives, negatives = scores[labels], scores[~labels]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def plant_swaps(records: Sequence[PreferenceRecord], count: int, seed: int = 0
                ) -> tuple[list[PreferenceRecord], list[int]]:
    """A copy of ``records`` with chosen and rejected swapped in ``count`` random pairs, and their indices."""
    if count > len(records):
        raise TetherError(f"cannot plant {count} swaps in {len(records)} pairs")
    swapped = sorted(random.Random(seed).sample(range(len(records)), count))
    out = list(records)
    for i in swapped:
        out[i] = replace(out[i], chosen=out[i].rejected, rejected=out[i].chosen)
    return out, swapped


# ---- the audit ---------------------------------------------------------------------------------

def load_pairs(path: str | Path) -> list[PreferenceRecord]:
    """Preference pairs from a JSONL of pairs (prompt/chosen/rejected) or of rankings
    (prompt/responses/ranks, expanded into their K-choose-2 pairs), told apart by the first row."""
    first = next((row for _, row, problem in read_rows(str(path)) if problem is None), None)
    kind = "ranking" if isinstance(first, dict) and "responses" in first else "preference"
    return load_records(path, kind)


def _pair_name(record: PreferenceRecord, index: int) -> str:
    if record.id is not None:
        return record.id
    return str(record.location) if record.location is not None else f"#{index}"


def audit_preferences(records: Sequence[PreferenceRecord], *, tokenizer: Any = None,
                      policy: str | None = None, reference: str | None = None, beta: float = 0.1,
                      reward: str | None = None, bootstrap: int = 200, seed: int = 0,
                      planted: Sequence[int] = (), top: int = 20, toxicity: bool = True,
                      refusal_judge: Judge | None = None) -> dict:
    """The whole data audit as a JSON-ready dict (see the module docstring). ``refusal_judge``
    decides the refusal concept (default: :func:`tether.judges.default_refusal_judge`).

    ``planted``: indices of pairs known to be mislabelled; each detector then reports its AUROC
    and the ranks of those pairs (1 = most suspicious).
    """
    if len(records) < 2:
        raise TetherError(f"a data audit needs at least 2 preference pairs, got {len(records)}")
    refusal_judge = refusal_judge or default_refusal_judge()
    names, chosen, rejected = pair_features(records, tokenizer=tokenizer,
                                            toxicity=toxicity_scorer() if toxicity else None,
                                            refusal_judge=refusal_judge)
    rates = win_rates(names, chosen, rejected)
    regression = preference_regression(names, chosen, rejected, bootstrap=bootstrap, seed=seed)

    detectors: dict[str, np.ndarray] = {"heldout_concepts": heldout_concept_suspicion(chosen, rejected, seed=seed)}
    if reward is not None:
        detectors["reward"] = -reward_margins(records, reward)
    if policy is not None or reference is not None:
        if policy is None or reference is None:
            raise TetherError("the implicit-reward detector needs both --policy and --reference")
        detectors["implicit_reward"] = -implicit_reward_margins(records, policy, reference, beta=beta)
    primary = next(name for name in ("implicit_reward", "reward", "heldout_concepts") if name in detectors)

    labels = np.zeros(len(records), dtype=bool)
    labels[list(planted)] = True
    detector_reports = {}
    for name, suspicion in detectors.items():
        filled = np.nan_to_num(suspicion, nan=-np.inf)
        ranks = np.empty(len(records), dtype=int)
        ranks[np.argsort(-filled, kind="stable")] = np.arange(1, len(records) + 1)
        report: dict[str, Any] = {"top": [{"rank": int(ranks[i]), "pair": _pair_name(records[i], i), "index": int(i),
                                           "suspicion": float(suspicion[i])}
                                          for i in np.argsort(-filled, kind="stable")[:top]]}
        if len(planted):
            report["planted_ranks"] = sorted(int(ranks[i]) for i in planted)
            report["auroc"] = auroc(filled, labels)
        detector_reports[name] = report
    return {"pairs": len(records), "concepts": names, "win_rates": rates, "regression": regression,
            "top_concept": regression[0]["concept"], "suspicious": {"primary": primary, **detector_reports},
            "planted": sorted(int(i) for i in planted), "refusal_judge": describe(refusal_judge)}


# ---- output ------------------------------------------------------------------------------------

def plot_win_rates(report: dict, path: str | Path) -> Path:
    """Horizontal bars: each concept's win rate with its Wilson interval, 0.5 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in report["win_rates"] if row["pairs_differing"]]
    figure, axis = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))
    rates = [row["win_rate"] for row in rows]
    errors = [[r - row["low"] for r, row in zip(rates, rows)], [row["high"] - r for r, row in zip(rates, rows)]]
    axis.barh(y, rates, xerr=errors, color="#4c72b0", capsize=3)
    axis.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
    axis.set_yticks(y, [f"{row['concept']} (n={row['pairs_differing']})" for row in rows])
    axis.set_xlim(0, 1)
    axis.set_xlabel("P(chosen has more | pair differs), 95% Wilson interval")
    axis.set_title(f"What the labels reward ({report['pairs']} pairs)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def print_report(report: dict) -> None:
    from rich.table import Table

    from tether.engine.progress import console

    regression = {row["concept"]: row for row in report["regression"]}
    table = Table(title=f"concepts in {report['pairs']} preference pairs (sorted by |weight|)")
    for column in ("concept", "win rate [95% CI]", "pairs differing", "weight [95% CI]"):
        table.add_column(column, justify="left" if column == "concept" else "right")
    rates = {row["concept"]: row for row in report["win_rates"]}
    for concept in [row["concept"] for row in report["regression"]]:
        rate, fit = rates[concept], regression[concept]
        shown = ("-" if not rate["pairs_differing"]
                 else f"{rate['win_rate']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}]")
        table.add_row(concept, shown, str(rate["pairs_differing"]),
                      f"{fit['weight']:+.2f} [{fit['low']:+.2f}, {fit['high']:+.2f}]")
    console.print(table)
    suspicious = report["suspicious"]
    primary = suspicious[suspicious["primary"]]
    pairs = Table(title=f"most suspicious pairs ({suspicious['primary']})")
    for column in ("rank", "pair", "suspicion"):
        pairs.add_column(column)
    for row in primary["top"][:10]:
        pairs.add_row(str(row["rank"]), row["pair"], f"{row['suspicion']:.3f}")
    console.print(pairs)
    for name, detector in suspicious.items():
        if isinstance(detector, dict) and "auroc" in detector:
            console.print(f"{name}: planted swaps ranked {detector['planted_ranks']}, AUROC {detector['auroc']:.3f}")


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "audit_data.json"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=True), encoding="utf-8")
    return json_path, plot_win_rates(report, out / "concept_win_rates.png")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tether audit data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="JSONL of preference pairs (prompt/chosen/rejected) or rankings "
                                     "(prompt/responses/ranks)")
    parser.add_argument("--tokenizer", help="model directory whose tokenizer counts length in tokens")
    parser.add_argument("--policy", help="DPO-trained policy directory (implicit-reward detector); on an RL "
                                         "prompt set, the policy that samples and whose gradients are compared")
    parser.add_argument("--reference", help="its reference model directory")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta for the implicit reward")
    parser.add_argument("--reward", action="append", metavar="NAME[=WEIGHT]",
                        help="reward function scoring both responses (name or module:function); on an RL "
                             "prompt set, repeat it for a weighted sum "
                             "(math_answer=1 --reward think_answer_format=0.5)")
    parser.add_argument("--plant-swaps", type=int, default=0, metavar="K",
                        help="swap K random pairs first and report where the detectors rank them")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples for the weight intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-toxicity", action="store_true", help="skip the toxicity concept")
    parser.add_argument("--out", help="output folder (default: runs/audit-data-FILESTEM)")
    # RL prompt sets (fragility, issue 22): prompt-only rows go to tether.audit.rl_data_audit
    parser.add_argument("--samples", type=int, default=4, help="RL prompts: completions sampled from --policy "
                                                               "when the rows have no 'completions' column")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="RL prompts: length of those samples")
    parser.add_argument("--answer-format", default="{answer}",
                        help="RL prompts: how a group's name is written as a probe answer, e.g. "
                             "'<answer>{answer}</answer>'")
    parser.add_argument("--plant", default="", metavar="IDS",
                        help="RL prompts: comma-separated ids of rows known to be planted (precision and recall)")
    args = parser.parse_args(argv)

    if is_prompt_set(args.file):
        return _main_rl(args)
    if args.reward and len(args.reward) > 1:
        raise TetherError("a preference file is audited with one --reward")
    args.reward = args.reward[0] if args.reward else None
    records = load_pairs(args.file)
    tokenizer = None
    if args.tokenizer:
        from tether.models.loading import load_model

        tokenizer = load_model(args.tokenizer)[1]
    planted: list[int] = []
    if args.plant_swaps:
        records, planted = plant_swaps(records, args.plant_swaps, seed=args.seed)
    report = audit_preferences(records, tokenizer=tokenizer, policy=args.policy, reference=args.reference,
                               beta=args.beta, reward=args.reward, bootstrap=args.bootstrap, seed=args.seed,
                               planted=planted, toxicity=not args.no_toxicity)
    report["file"] = str(args.file)
    print_report(report)
    out = Path(args.out) if args.out else Path("runs") / f"audit-data-{Path(args.file).stem}"
    json_path, png_path = write_report(report, out)
    from tether.engine.progress import console

    console.print(f"wrote {json_path} and {png_path}")
    return 0


# ---- RL prompt sets (fragility, issue 22) ------------------------------------------------------

def is_prompt_set(path: str | Path) -> bool:
    """True when the file's first valid row is a prompt without responses (GRPO / PPO data)."""
    first = next((row for _, row, problem in read_rows(str(path)) if problem is None), None)
    return isinstance(first, dict) and "prompt" in first and not {"chosen", "rejected", "responses"} & set(first)


def reward_specs_from_args(values: Sequence[str]) -> list:
    """``NAME`` or ``NAME=WEIGHT`` (weight 1 by default) as reward specs."""
    from tether.rewards.base import RewardSpec
    from tether.rewards.resolve import resolve_reward, reward_name

    specs = []
    for value in values:
        name, _, weight = value.partition("=")
        specs.append(RewardSpec(reward_name(name), resolve_reward(name), float(weight) if weight else 1.0))
    return specs


def _main_rl(args: argparse.Namespace) -> int:
    from tether.audit.rl_data_audit import audit_rl_prompts, print_rl_report
    from tether.engine.progress import console

    records = load_records(args.file, "prompt")
    policy = tokenizer = None
    if args.policy:
        from tether.models.loading import load_model

        policy, tokenizer = load_model(args.policy)
    ids = [i for i in args.plant.split(",") if i]
    planted = [i for i, r in enumerate(records) if r.id in ids]
    if len(planted) != len(ids):
        raise TetherError(f"--plant names ids the file does not have: {sorted(set(ids) - {r.id for r in records})}")
    report = audit_rl_prompts(records, reward_specs_from_args(args.reward or []), policy=policy,
                              tokenizer=tokenizer, samples=args.samples, max_new_tokens=args.max_new_tokens,
                              answer_format=args.answer_format, planted=planted, seed=args.seed)
    report["file"] = str(args.file)
    print_rl_report(report)
    out = Path(args.out) if args.out else Path("runs") / f"audit-data-{Path(args.file).stem}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit_rl_data.json").write_text(json.dumps(report, indent=2, allow_nan=True), encoding="utf-8")
    console.print(f"wrote {out / 'audit_rl_data.json'}")
    return 0
