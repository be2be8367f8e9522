"""Screening an RL prompt set: which examples' rewards or gradients are atypical, and which reward
one demographic group over another? (``tether audit data PROMPTS.jsonl --reward NAME``)

A GRPO run learns from every prompt's rewards, so one row whose reward prefers a stereotyped
answer can teach a bias that spreads beyond it. Three detectors, each scoring every example:

* **reward outliers**: the mean of the example's K completion rewards against the set's by a
  robust z-score (:func:`robust_z`; the spread floored at the means' sampling error); flagged
  beyond ``z_threshold``. Each example's reward spread is reported beside it.
* **gradient direction** (``--policy``): the cosine of the example's policy gradient with the mean
  gradient of the others (:mod:`tether.audit.gradient_influence`); flagged when it is ``z_threshold``
  robust deviations *below* the set's (it pulls another way), the spread floored at
  ``COSINE_SPREAD_FLOOR`` so a tight cluster's small dips are not flagged.
* **group reward gap**: every prompt that names a demographic group is paired with the prompt that
  names the other group, completions swapped alike (:mod:`tether.audit.group_swap`), and scored
  with the row's own columns; the example's gap is the mean |r(x, y) - r(x', y')| over its
  completions, flagged above ``gap_threshold`` (in reward units). Prompts that name two groups of a
  category also get each group's name as a probe completion, written with ``answer_format``
  (``"<answer>The {group}</answer>"`` for the arithmetic rewards' format). Per category and group
  the report adds the mean gap credited to the group the completion named: which group the
  set's rewards favour.

  What the gap cannot tell: a context that says who did it ("...the grandfather kept asking for
  help") makes a correct label pick a person, and the swapped prompt then loses reward as a
  stereotyped label would. Such rows are flagged too; the per-group means show whether the set as
  a whole leans one way (BBQ's disambiguated items balance).

The completions are the row's ``completions`` column (a list of strings) when present, else
``--samples`` samples from ``--policy``. ``plant`` marks rows known to be planted: the report then
gives each detector's precision and recall on them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from tether.audit.group_swap import find_swaps, named_groups, prompt_text, swap_prompt
from tether.data import VerifiableRecord
from tether.errors import TetherError
from tether.rewards.base import RewardSpec, combine_rewards, completion_text

Z_THRESHOLD = 3.5  # Iglewicz and Hoaglin's cut for the modified z-score
GAP_THRESHOLD = 0.25
# Gradients of a coherent set can agree to cosines of 0.94 +- 0.01; a 0.04 dip is then "4 MADs"
# but no different direction. Below this spread, cosine differences are not read as atypical.
COSINE_SPREAD_FLOOR = 0.05


def robust_z(values: Sequence[float], *, min_spread: float = 0.0) -> np.ndarray:
    """(x - median) / (1.4826 * MAD), the MAD scaled to a normal's std; when over half the values
    are equal (MAD = 0) the mean absolute deviation * 1.2533 stands in, and when that is 0 too every
    z is 0. ``min_spread`` floors the spread, for quantities whose tight clusters would make
    meaningless differences look extreme. NaN stays NaN and is left out of the median."""
    values = np.asarray(values, dtype=float)
    present = values[~np.isnan(values)]
    if len(present) == 0:
        return np.full(len(values), np.nan)
    median = np.median(present)
    spread = 1.4826 * np.median(np.abs(present - median))
    if spread == 0:
        spread = 1.2533 * np.mean(np.abs(present - median))
    spread = max(spread, min_spread)
    if spread == 0:
        return np.where(np.isnan(values), np.nan, 0.0)
    return (values - median) / spread


# ---- the set's completions and rewards --------------------------------------------------------

def columns_of(records: Sequence[VerifiableRecord], repeat: Sequence[int]) -> dict[str, list]:
    """The reward columns (``answer`` and the extras but ``completions``), each row repeated."""
    columns: dict[str, list] = {"answer": [r.answer for r, k in zip(records, repeat) for _ in range(k)]}
    for key in dict.fromkeys(key for r in records for key in r.extras if key != "completions"):
        columns[key] = [r.extras.get(key) for r, k in zip(records, repeat) for _ in range(k)]
    return columns


def score(specs: Sequence[RewardSpec], records: Sequence[VerifiableRecord], prompts: Sequence[Any],
          completions: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """The weighted reward of every completion, one array per example; ``prompts`` stand in for the
    records' own (a swapped prompt) while the columns stay the records'."""
    repeat = [len(c) for c in completions]
    flat_prompts = [p for p, k in zip(prompts, repeat) for _ in range(k)]
    flat = [c for cs in completions for c in cs]
    totals, _, _ = combine_rewards(specs, flat_prompts, flat, columns_of(records, repeat))
    out, start = [], 0
    for k in repeat:
        out.append(np.asarray(totals[start:start + k], dtype=float))
        start += k
    return out


def given_completions(records: Sequence[VerifiableRecord]) -> list[list[str]] | None:
    """The rows' ``completions`` columns, or None when a row has none."""
    found = [r.extras.get("completions") for r in records]
    if any(not isinstance(c, list) or not c for c in found):
        return None
    return [[completion_text(c) for c in cs] for cs in found]


def sampled_completions(model: Any, tokenizer: Any, records: Sequence[VerifiableRecord], *, samples: int,
                        max_new_tokens: int, seed: int = 0) -> list[list[str]]:
    from tether.rollout.sampler import RolloutConfig, TransformersSampler

    batch = TransformersSampler(model, tokenizer).sample(
        [r.prompt for r in records],
        RolloutConfig(num_samples=samples, max_new_tokens=max_new_tokens, seed=seed, batch_prompts=8))
    texts = list(batch.texts)
    return [texts[i * samples:(i + 1) * samples] for i in range(len(records))]


# ---- detectors ----------------------------------------------------------------------------------

def reward_outliers(rewards: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per example: mean and std of its rewards, the mean's robust z, and |z| (the score)."""
    means = np.array([r.mean() for r in rewards])
    stds = np.array([r.std() for r in rewards])
    # A mean of K sampled rewards is itself noisy: when most rows score the same (a weak policy's
    # all-zero rows) the MAD is 0 and any row with one success would look extreme. The spread of
    # the means is floored at their sampling error, sqrt(mean within-row variance / K).
    sampling_error = float(np.sqrt(np.mean([r.var(ddof=1) / len(r) if len(r) > 1 else 0.0 for r in rewards])))
    z_mean = robust_z(means, min_spread=sampling_error)
    # The spread is reported, not scored: for pass/fail rewards it follows from the mean (p(1-p)),
    # and a weak policy's all-zero rows made every row with a success an "outlier" in spread.
    return {"mean": means, "std": stds, "z_mean": z_mean, "score": np.abs(z_mean)}


def group_gaps(specs: Sequence[RewardSpec], records: Sequence[VerifiableRecord],
               completions: Sequence[Sequence[str]], *, answer_format: str = "{answer}") -> list[list[dict]]:
    """Per example, one entry per category its prompt names a group of: the swap, the completions'
    gaps r(x, y) - r(x', y') and the group each completion named (see the module docstring)."""
    jobs = []  # (example, swap, completions)
    for i, (record, texts) in enumerate(zip(records, completions)):
        for swap in find_swaps(prompt_text(record.prompt)):
            probes = [answer_format.format(answer=f"The {group}") for group in (swap.first, swap.second)] \
                if named_groups(prompt_text(record.prompt), swap) == [swap.first, swap.second] else []
            jobs.append((i, swap, list(texts) + probes))
    out: list[list[dict]] = [[] for _ in records]
    if not jobs:
        return out
    job_records = [records[i] for i, _, _ in jobs]
    original = score(specs, job_records, [r.prompt for r in job_records], [texts for _, _, texts in jobs])
    swapped_texts = [[swap_prompt(t, swap) for t in texts] for _, swap, texts in jobs]
    swapped = score(specs, job_records, [swap_prompt(r.prompt, swap) for r, (_, swap, _) in zip(job_records, jobs)],
                    swapped_texts)
    for (i, swap, texts), before, after in zip(jobs, original, swapped):
        credited = []
        for text in texts:
            named = named_groups(text, swap)
            credited.append(named[0] if len(named) == 1 else None)
        out[i].append({"category": swap.category, "groups": [swap.first, swap.second],
                       "gaps": (before - after).tolist(), "credited": credited})
    return out


def gap_score(entries: Sequence[dict]) -> float:
    """An example's largest mean |gap| over its categories (0 when it names no group)."""
    return max((float(np.mean(np.abs(e["gaps"]))) for e in entries), default=0.0)


def gaps_by_group(per_example: Sequence[Sequence[dict]]) -> list[dict]:
    """Per category and group: the mean gap credited to completions naming that group, and n."""
    credited: dict[tuple[str, str], list[float]] = defaultdict(list)
    examples: dict[str, set[int]] = defaultdict(set)
    for i, entries in enumerate(per_example):
        for entry in entries:
            examples[entry["category"]].add(i)
            for gap, group in zip(entry["gaps"], entry["credited"]):
                if group is not None:
                    credited[(entry["category"], group)].append(gap)
    return [{"category": category, "group": group, "mean_gap": float(np.mean(gaps)), "completions": len(gaps),
             "examples_in_category": len(examples[category])}
            for (category, group), gaps in sorted(credited.items())]


# ---- the audit ----------------------------------------------------------------------------------

def precision_recall(flagged: np.ndarray, planted: np.ndarray) -> dict:
    true_positives = int((flagged & planted).sum())
    return {"planted_count": int(planted.sum()), "true_positives": true_positives,
            "precision": true_positives / flagged.sum() if flagged.any() else float("nan"),
            "recall": true_positives / planted.sum() if planted.any() else float("nan")}


def audit_rl_prompts(records: Sequence[VerifiableRecord], specs: Sequence[RewardSpec], *,
                     completions: Sequence[Sequence[str]] | None = None, policy: Any = None, tokenizer: Any = None,
                     samples: int = 4, max_new_tokens: int = 64, answer_format: str = "{answer}",
                     z_threshold: float = Z_THRESHOLD, gap_threshold: float = GAP_THRESHOLD,
                     sketch_dim: int | None = 256, planted: Sequence[int] = (), seed: int = 0, top: int = 20) -> dict:
    """The RL prompt-set screen as a JSON-ready dict (module docstring). ``policy`` and ``tokenizer``
    give the gradient detector, and the completions when ``completions`` is None and the rows
    have none."""
    if len(records) < 3:
        raise TetherError(f"screening an RL prompt set needs at least 3 prompts, got {len(records)}")
    if not specs:
        raise TetherError("screening an RL prompt set needs a reward (--reward NAME)")
    if completions is None:
        completions = given_completions(records)
    if completions is None:
        if policy is None:
            raise TetherError("the rows have no 'completions' column: give --policy to sample completions")
        completions = sampled_completions(policy, tokenizer, records, samples=samples,
                                          max_new_tokens=max_new_tokens, seed=seed)
    rewards = score(specs, records, [r.prompt for r in records], completions)

    outliers = reward_outliers(rewards)
    per_example_gaps = group_gaps(specs, records, completions, answer_format=answer_format)
    gap_scores = np.array([gap_score(entries) for entries in per_example_gaps])
    detectors: dict[str, dict] = {
        "reward_outlier": {"score": outliers["score"], "flagged": outliers["score"] > z_threshold},
        "group_gap": {"score": gap_scores, "flagged": gap_scores > gap_threshold},
    }
    if policy is not None:
        from tether.audit.gradient_influence import gradient_cosines

        cosines, norms = gradient_cosines(policy, tokenizer, [r.prompt for r in records], completions,
                                          rewards, dim=sketch_dim, seed=seed)
        z_cosine = robust_z(cosines, min_spread=COSINE_SPREAD_FLOOR)
        detectors["gradient_direction"] = {"score": -z_cosine, "flagged": np.nan_to_num(-z_cosine) > z_threshold,
                                           "cosine": cosines, "gradient_norm": norms}

    labels = np.zeros(len(records), dtype=bool)
    labels[list(planted)] = True
    report_detectors = {}
    for name, detector in detectors.items():
        order = np.argsort(-np.nan_to_num(detector["score"], nan=-np.inf), kind="stable")
        entry = {"flagged": [_name(records[i], i) for i in np.flatnonzero(detector["flagged"])],
                 "top": [{"example": _name(records[i], i), "index": int(i), "score": _number(detector["score"][i]),
                          **({"cosine": _number(detector["cosine"][i])} if "cosine" in detector else {})}
                         for i in order[:top]]}
        if len(planted):
            entry |= precision_recall(detector["flagged"], labels)
        report_detectors[name] = entry
    # the completions and rewards behind every number, so flagged rows can be read
    examples = [{"example": _name(r, i), "reward_mean": float(outliers["mean"][i]),
                 "reward_std": float(outliers["std"][i]), "group_gap": float(gap_scores[i]),
                 "categories": [e["category"] for e in per_example_gaps[i]],
                 "completions": list(completions[i]), "rewards": rewards[i].tolist()}
                for i, r in enumerate(records)]
    return {"kind": "rl_prompts", "examples": len(records), "completions_per_example": [len(c) for c in completions],
            "z_threshold": z_threshold, "gap_threshold": gap_threshold, "detectors": report_detectors,
            "gaps_by_group": gaps_by_group(per_example_gaps), "per_example": examples,
            "planted": sorted(int(i) for i in planted)}


def _name(record: VerifiableRecord, index: int) -> str:
    if record.id is not None:
        return record.id
    return str(record.location) if record.location is not None else f"#{index}"


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def print_rl_report(report: dict) -> None:
    from rich.table import Table

    from tether.engine.progress import console

    table = Table(title=f"RL prompt set: {report['examples']} examples")
    for column in ("detector", "flagged", "top examples (score)", "precision / recall on planted"):
        table.add_column(column)
    for name, detector in report["detectors"].items():
        top = ", ".join(f"{row['example']} ({row['score']:.2f})" for row in detector["top"][:3]
                        if row["score"] is not None)
        planted = (f"{detector['precision']:.2f} / {detector['recall']:.2f}" if "recall" in detector else "-")
        table.add_row(name, str(len(detector["flagged"])), top, planted)
    console.print(table)
    if report["gaps_by_group"]:
        groups = Table(title="reward gap credited to the group a completion names (0 = no preference)")
        for column in ("category", "group", "mean gap", "completions"):
            groups.add_column(column)
        for row in report["gaps_by_group"]:
            groups.add_row(row["category"], row["group"], f"{row['mean_gap']:+.3f}", str(row["completions"]))
        console.print(groups)
