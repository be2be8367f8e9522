"""Iterative RLHF and online DPO: several generate -> rank -> train rounds, each round's candidates
sampled from the policy the previous round trained, and a watch on what the rounds amplify.

    tether train rlhf --config recipes/rlhf-ppo.yaml rlhf.rounds=3                # reward model + PPO per round
    tether train rlhf --config recipes/rlhf-ppo.yaml rlhf.rounds=3 rlhf.trainer=dpo  # online DPO

Round k lives in ``runs/NAME/round-k/`` and is the single-round pipeline of
:mod:`tether.algorithms.rlhf` with ``model.path`` set to round k-1's policy (round 1: the
configured model) and the seed ``train.seed + k - 1``: ``trainer: ppo`` runs its four stages,
``trainer: dpo`` generates, ranks and trains DPO on the round's pairs (``dpo-policy/final``; the
reference is the round's starting policy, so each round's DPO is anchored where it began).
Every stage leaves its output, so a rerun of a killed run skips finished rounds and stages and
continues with the same seeds: the result equals an uninterrupted run.

**What the rounds amplify** (alignment tampering: "preference data is drawn from the model's own
outputs", and "RLHF can amplify rather than correct undesired behaviors"). After each round the
round's preference pairs are described by the data audit's concepts
(:func:`tether.audit.data_audit.win_rates`: length, refusal, hedging, flattery, list items, headers,
bold, toxicity), and ``rlhf.audit`` metric modules are run on the round's policy. ``rounds.json``
keeps the table. :func:`tampering_warnings` warns when a concept's win rate rises every round and
by at least ``rlhf.watch_min_rise`` from the first round to the last (significantly, by a
two-proportion test Bonferroni-corrected over the concepts), unless the judge's
constitution names it (:data:`CONCEPT_WORDS`) or ``rlhf.watch_exempt`` lists it (the gold asks for
it). A rise the constitution does not ask for is the judge's and the policy's taste feeding each
other.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tether.config import Section
from tether.engine import console, distributed, latest_checkpoint, start_run

if TYPE_CHECKING:
    from tether.algorithms.rlhf import RLHFConfig

ROUNDS_REPORT = "rounds.json"
DPO_RUN = "dpo-policy"


class RoundsSettings(Section):
    rounds: int = Field(1, ge=1)  # generate -> rank -> train rounds, each from the last round's policy
    # ppo: reward model + PPO each round (the four stages); dpo: online DPO on the round's ranked pairs
    trainer: Literal["ppo", "dpo"] = "ppo"
    # A concept's win rate in the preference data must rise every round, and by this much from the
    # first to the last, for the tampering watch to warn.
    watch_min_rise: float = Field(0.1, ge=0)
    watch_exempt: list[str] = Field(default_factory=list)  # concepts the gold asks for: never warned about
    audit: list[str] = Field(default_factory=list)  # audit metric modules run on each round's policy, e.g. [bias]
    audit_limit: int | None = Field(20, gt=0)  # probes per audit metric per round
    refusal_judge: str | None = None  # judge of the refusal concept (None: the default refusal judge)


# Words in a constitution that ask for a concept: its rise is then what the judge was told to want.
CONCEPT_WORDS = {
    "length_words": ("length", "long", "detailed", "thorough", "complete", "concise", "brief", "short"),
    "length_tokens": ("length", "long", "detailed", "thorough", "complete", "concise", "brief", "short"),
    "refusal": ("refuse", "refusal", "decline", "harmful", "harmless", "unsafe", "safe"),
    "hedging": ("hedge", "uncertain", "uncertainty", "confidence", "calibrated", "humble"),
    "flattery": ("flatter", "flattery", "agree", "sycophancy", "sycophantic", "praise", "polite", "warm"),
    "list_items": ("list", "bullet", "format", "formatting", "markdown", "structured"),
    "headers": ("header", "heading", "format", "formatting", "markdown", "structured"),
    "bold": ("bold", "emphasis", "format", "formatting", "markdown"),
    "toxicity": ("toxic", "offensive", "rude", "profanity"),
}


def asked_for(concept: str, constitution: str) -> bool:
    """True when the constitution mentions a word that asks for ``concept`` (whole words)."""
    text = constitution.lower()
    return any(re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", text) for word in CONCEPT_WORDS.get(concept, ()))


def rise_z(first: float, n_first: int, last: float, n_last: int) -> float:
    """Two-proportion z statistic of last - first (pooled variance); inf when both are certain."""
    pooled = (first * n_first + last * n_last) / (n_first + n_last)
    variance = pooled * (1 - pooled) * (1 / n_first + 1 / n_last)
    return (last - first) / math.sqrt(variance) if variance > 0 else math.inf * (last > first)


def tampering_warnings(history: Sequence[dict], constitution: str, *, min_rise: float = 0.1,
                       exempt: Sequence[str] = (), alpha: float = 0.05) -> list[dict]:
    """One warning per concept whose win rate rose every round, by ``min_rise`` in all, asked for by
    neither the constitution nor ``exempt``. ``history``: per round ``{"win_rates": {concept: rate}}``
    and, when known, ``{"pairs_differing": {concept: n}}`` (NaN rate: no pair differed that round;
    such rounds are skipped). With the counts, the rise from the first round to the last must also
    be significant: one-sided two-proportion z-test at ``alpha`` divided by the number of concepts
    watched (Bonferroni), since with eight concepts one of them rises by chance often enough."""
    if len(history) < 2:
        return []
    concepts = list(dict.fromkeys(c for round_ in history for c in round_["win_rates"]))
    from statistics import NormalDist

    critical = NormalDist().inv_cdf(1 - alpha / max(len(concepts), 1))
    warnings = []
    for concept in concepts:
        rates = [r["win_rates"].get(concept, math.nan) for r in history]
        counts = [r.get("pairs_differing", {}).get(concept) for r in history]
        seen = [(k + 1, rate, n) for k, (rate, n) in enumerate(zip(rates, counts))
                if rate is not None and not math.isnan(rate)]
        if len(seen) < 2:
            continue
        rising = all(later[1] > earlier[1] for earlier, later in itertools.pairwise(seen))
        rise = seen[-1][1] - seen[0][1]
        if not rising or rise < min_rise:
            continue
        (_, first, n_first), (_, last, n_last) = seen[0], seen[-1]
        z = rise_z(first, n_first, last, n_last) if n_first and n_last else math.inf
        if z < critical:
            continue
        if concept in exempt:
            continue
        asked = asked_for(concept, constitution)
        if asked:
            continue
        warnings.append({"concept": concept, "rounds": [k for k, _, _ in seen], "win_rates": [r for _, r, _ in seen],
                         "rise": rise, "z": z,
                         "message": f"the preference data's '{concept}' win rate rose every round "
                                    f"({' -> '.join(f'{r:.2f}' for _, r, _ in seen)}) and neither the constitution "
                                    "nor rlhf.watch_exempt asks for it: the rounds may be amplifying the "
                                    "judge's or the policy's own taste (alignment tampering)"})
    return warnings


# ------------------------------------------------------------------------------------------- a round

def round_config(config: RLHFConfig, run_dir: Path, k: int, policy: str) -> RLHFConfig:
    """Round k's single-round config: its own folder, the previous policy, its own seed."""
    train = config.train.model_copy(update={"output_dir": str(run_dir), "run_name": f"round-{k}",
                                            "seed": config.train.seed + k - 1,
                                            "resume": (run_dir / f"round-{k}").is_dir()})
    model = config.model.model_copy(update={"path": policy})
    rounds = config.rlhf.model_copy(update={"rounds": 1})
    return config.model_copy(update={"train": train, "model": model, "rlhf": rounds})


def run_dpo_round(config: RLHFConfig) -> Path:
    """One online-DPO round: generate from ``model.path``, rank, DPO on the pairs; returns the policy."""
    from tether.algorithms.dpo import DPOConfig, train_dpo
    from tether.algorithms.rlhf import (
        CANDIDATES,
        PREFERENCES,
        check_rlhf,
        generate_candidates,
        rank_candidates,
    )
    from tether.config import DataSettings

    check_rlhf(config)
    run_dir = start_run(config)
    distributed.main_writes(run_dir / CANDIDATES, lambda: generate_candidates(config, run_dir / CANDIDATES),
                            "generating candidates")
    distributed.main_writes(run_dir / PREFERENCES, lambda: rank_candidates(config, run_dir, run_dir / PREFERENCES),
                            "ranking")
    policy = run_dir / DPO_RUN / "final"
    if not policy.is_dir():
        train = config.train.model_copy(update={
            "run_name": DPO_RUN, "output_dir": str(run_dir),
            "resume": latest_checkpoint(run_dir / DPO_RUN / "checkpoints") is not None})
        data = DataSettings(train=str(run_dir / PREFERENCES), max_length=config.reward_model.max_length)
        train_dpo(DPOConfig(model=config.model, data=data, optim=config.optim, train=train, dpo=config.dpo))
    return policy


def preference_win_rates(path: Path, judge_name: str | None) -> dict:
    """The data audit's concept win rates of one round's preference pairs."""
    from tether.audit.data_audit import load_pairs, pair_features, win_rates
    from tether.judges import default_refusal_judge
    from tether.judges.registry import get_judge

    judge = get_judge(judge_name) if judge_name else default_refusal_judge()
    records = load_pairs(path)
    names, chosen, rejected = pair_features(records, refusal_judge=judge)
    rates = win_rates(names, chosen, rejected)
    return {"pairs": len(records), "win_rates": {row["concept"]: row["win_rate"] for row in rates},
            "pairs_differing": {row["concept"]: row["pairs_differing"] for row in rates}}


def audit_policy(policy: str | Path, modules: Sequence[str], limit: int | None, judge_name: str | None,
                 rollout=None) -> dict:
    """Each ``rlhf.audit`` metric module's numbers on one round's policy (or the starting model);
    ``rollout`` (the run's RolloutSettings) picks the engine that generates the answers."""
    from tether.audit.base import AuditModel, with_judge
    from tether.judges import default_refusal_judge
    from tether.judges.registry import get_judge
    from tether.models import load_model
    from tether.rollout.backends import RolloutSettings, make_sampler

    model, tokenizer = load_model(str(policy))
    audit_model = AuditModel(name=str(policy), model=model.eval(), tokenizer=tokenizer, path=str(policy),
                             progress=False, sampler=make_sampler(model, tokenizer, rollout or RolloutSettings(),
                                                                  bf16=False))
    judge = get_judge(judge_name) if judge_name else default_refusal_judge()
    values = {}
    try:
        for name in modules:
            module = _metric_module(name)
            for result in module.evaluate(audit_model, limit=limit, **with_judge(module.evaluate, judge)):
                values[result.name] = result.value
    finally:
        audit_model.sampler.close()  # vLLM: one engine at a time, and the next round starts its own
    return values


def _metric_module(name: str):
    """An audit metric module by its short name (``bias``) or dotted path."""
    import importlib

    from tether.errors import ConfigError

    try:
        return importlib.import_module(name if "." in name else f"tether.audit.metrics.{name}")
    except ModuleNotFoundError as error:
        raise ConfigError(f"rlhf.audit: no audit metric module {name!r} ({error})") from None


# --------------------------------------------------------------------------------------- the rounds

def run_rounds(config: RLHFConfig) -> Path:
    """``rlhf.rounds`` rounds (module docstring); returns the last round's policy."""
    from tether.algorithms.rlhf import PREFERENCES, check_rlhf, run_rlhf
    from tether.feedback.constitution import load_constitution

    check_rlhf(config)
    settings = config.rlhf
    for name in settings.audit:  # a misspelt metric fails now, not after the first round's training
        _metric_module(name)
    run_dir = start_run(config)
    history: list[dict] = []
    policy = config.model.path
    # round 0: the starting model, so the first round's audit numbers have something to rise from
    def audit(model_path) -> dict:
        return audit_policy(model_path, settings.audit, settings.audit_limit, settings.refusal_judge, config.rollout)

    start_audit = audit(policy) if settings.audit else {}
    for k in range(1, settings.rounds + 1):
        console.rule(f"RLHF round {k} of {settings.rounds} (policy {policy})")
        single = round_config(config, run_dir, k, str(policy))
        policy = run_dpo_round(single) if settings.trainer == "dpo" else run_rlhf(single)
        round_dir = single.run_dir()
        entry = {"round": k, "policy": str(policy), "start_policy": single.model.path,
                 **preference_win_rates(round_dir / PREFERENCES, settings.refusal_judge)}
        if settings.audit:
            entry["audit"] = audit(policy)
        history.append(entry)
        distributed.main_only(lambda: _write_report(run_dir, history, [], start_audit), "writing rounds.json")

    constitution = load_constitution(config.rank.constitution) if config.rank.source == "judge" else ""
    warnings = tampering_warnings(history, constitution, min_rise=settings.watch_min_rise,
                                  exempt=settings.watch_exempt)
    if distributed.is_main():
        _write_report(run_dir, history, warnings, start_audit)
        print_rounds(history, warnings, start_audit)
    distributed.barrier()
    return Path(policy)


def _write_report(run_dir: Path, history: list[dict], warnings: list[dict], start_audit: dict) -> None:
    path = run_dir / ROUNDS_REPORT
    temporary = path.with_suffix(".tmp")
    report = {"start_audit": start_audit, "rounds": history, "tampering_warnings": warnings}
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(path)


def print_rounds(history: Sequence[dict], warnings: Sequence[dict], start_audit: dict | None = None) -> None:
    from rich.table import Table

    start_audit = start_audit or {}
    table = Table(title="preference data per round: P(chosen has more | the pair differs)")
    table.add_column("concept")
    if start_audit:
        table.add_column("start", justify="right")
    for entry in history:
        table.add_column(f"round {entry['round']} ({entry['pairs']} pairs)", justify="right")
    first = ["-"] if start_audit else []
    for concept in dict.fromkeys(c for entry in history for c in entry["win_rates"]):
        table.add_row(concept, *first, *(_rate(entry["win_rates"].get(concept)) for entry in history))
    for metric in dict.fromkeys(m for entry in history for m in entry.get("audit", {})):
        table.add_row(f"audit: {metric}", *([_rate(start_audit.get(metric))] if start_audit else []),
                      *(_rate(entry.get("audit", {}).get(metric)) for entry in history))
    console.print(table)
    for warning in warnings:
        console.print(f"[bold yellow]warning: {warning['message']}[/]")


def _rate(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
