"""The RLHF pipeline as it is taught (Christiano et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022):

    1. generate   K candidate responses per prompt from the policy          1-candidates.jsonl
    2. rank       them: an AI judge under a constitution, or a labeling-app  2-judgments.jsonl
                  export (TRL preference or ranking JSONL)                   2-preferences.jsonl
    3. reward     a Bradley-Terry reward model on those preferences, with    3-reward-model/final
                  a share of the prompts held out to check that it learned   2-preferences-{train,heldout}.jsonl
    4. PPO        the policy against the reward model, KL-penalised          4-ppo/final
    report        the reward model's held-out accuracy; held-out reward-     report.json
                  model score and KL before/after PPO

    tether train rlhf --config recipes/rlhf-ppo.yaml

Every stage writes its output into the run folder, and a rerun skips the stages whose output is
there (delete a stage's output to redo it and the stages after it; an interrupted training stage
resumes from its last checkpoint). With ``rank.source: file`` and no export yet, the run stops after stage 1: label
1-candidates.jsonl in the labeling app, export the preferences, set ``rank.file`` and run again.

``rlhf.rounds: N`` repeats the pipeline N times, each round generating from the last round's policy,
and ``rlhf.trainer: dpo`` trains online DPO on each round's pairs instead of stages 3-4; the rounds
report what the preference data rewards round by round and warn when a concept keeps rising
(:mod:`tether.algorithms.rounds`).

Under torchrun, stages 1 and 2 (generation, judging) run on rank 0 while the other ranks wait, and
the two trainers (stages 3 and 4) run on every rank, data-parallel (docs/scaling.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tether.algorithms.dpo import DPOSettings
from tether.algorithms.ppo import PPOConfig, PPOSettings, train_ppo
from tether.algorithms.reward import REPORT_FILE as REWARD_REPORT_FILE
from tether.algorithms.reward import RewardModelConfig, RewardModelSettings, data_kind, train_reward_model
from tether.algorithms.rounds import RoundsSettings
from tether.config import (
    DataSettings,
    ModelSettings,
    OptimSettings,
    RewardSettings,
    RunConfig,
    Section,
    resolve_bundled,
)
from tether.data import read_rows, seeded_subset, validate_row
from tether.engine import console, distributed, latest_checkpoint, read_metrics, start_run
from tether.engine.stages import StagedRun
from tether.errors import CheckpointError, ConfigError, DataValidationError, TetherError
from tether.feedback.constitution import DEFAULT_CONSTITUTION
from tether.rollout.backends import RolloutSettings

CANDIDATES = "1-candidates.jsonl"
JUDGMENTS = "2-judgments.jsonl"
PREFERENCES = "2-preferences.jsonl"
PREFERENCES_TRAIN = "2-preferences-train.jsonl"  # stage 3's split of PREFERENCES, by prompt
PREFERENCES_HELD_OUT = "2-preferences-heldout.jsonl"
REWARD_RUN = "3-reward-model"
PPO_RUN = "4-ppo"
REPORT = "report.json"


class GenerateStage(Section):
    num_candidates: int = Field(2, ge=2)  # responses per prompt to compare
    max_prompts: int | None = Field(None, gt=0)  # N prompts of data.train drawn with train.seed; None: all
    max_new_tokens: int = Field(48, gt=0)
    # One value, or several to share each prompt's candidates out among (e.g. [0.3, 1.0]: a focused
    # and a wandering answer side by side, so rankings have clear contrasts to learn from). 0 is
    # greedy: at most one candidate of a prompt's (e.g. [0, 1.0]).
    temperature: float | list[float] = 1.0
    batch_prompts: int = Field(4, gt=0)

    @model_validator(mode="after")
    def _temperatures(self) -> GenerateStage:
        from tether.feedback.generate import temperature_shares

        values = self.temperature if isinstance(self.temperature, list) else [self.temperature]
        if any(t < 0 for t in values):
            raise ValueError(f"generate.temperature must not be negative, got {self.temperature}")
        try:
            temperature_shares(self.num_candidates, values)
        except ConfigError as error:
            raise ValueError(f"generate.temperature: {error}") from None
        return self


class RankStage(Section):
    source: Literal["judge", "file"] = "judge"
    file: str | None = None  # labeling-app export: preference or ranking JSONL (source: file)
    judge: str = "local:tether:default"  # judge backend: local:PATH or openai:URL
    judge_model: str | None = None  # model name for an openai backend
    constitution: str = DEFAULT_CONSTITUTION
    # Score gaps within this are ties, and ties make no pair (local judge: log-prob units;
    # scripted: reward units). None: the backend's default.
    tie_margin: float | None = Field(None, ge=0)


class RewardModelStage(Section):
    model: ModelSettings | None = None  # None: start from the policy's model (and its LoRA settings)
    reward: RewardModelSettings = RewardModelSettings()
    optim: OptimSettings = OptimSettings(lr=1e-4, schedule="constant")
    batch_size: int = Field(8, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    max_length: int = Field(512, gt=8)
    # Share of the ranked prompts (all their pairs) kept out of training to measure the reward model's
    # pairwise accuracy on prompts it never saw (drawn with train.seed). 0: train on every pair, unchecked.
    heldout_fraction: float = Field(0.2, ge=0, lt=1)


class RLHFConfig(RunConfig):
    """``model`` is the policy; ``data.train`` the prompts (for stage 1 and for PPO), ``data.eval``
    held-out prompts for the before/after report; ``optim`` and ``train`` drive the PPO stage
    (``train.max_steps`` PPO steps) and name the run folder."""

    generate: GenerateStage = GenerateStage()
    rank: RankStage = RankStage()
    reward_model: RewardModelStage = RewardModelStage()
    ppo: PPOSettings = PPOSettings()  # ppo.rewards: extra rewards added to the trained reward model
    # fragility (issue 22): several rounds, PPO or online DPO, and the tampering watch (algorithms/rounds.py)
    rlhf: RoundsSettings = RoundsSettings()
    dpo: DPOSettings = DPOSettings()  # the DPO of each round with rlhf.trainer: dpo
    # the engine that samples stage 1's candidates and PPO's rollouts (transformers or vllm)
    rollout: RolloutSettings = RolloutSettings()


# ------------------------------------------------------------------------------------------- stages

def generate_candidates(config: RLHFConfig, out: Path) -> None:
    """Stage 1: ``num_candidates`` samples per prompt from the starting policy, as FeedbackItems."""
    from tether.feedback.generate import (
        generate_items,
        load_named_model,
        read_prompts,
        write_jsonl,
    )

    stage = config.generate
    prompts = seeded_subset(read_prompts(config.data.train), stage.max_prompts, config.train.seed)
    name, model, tokenizer = load_named_model(f"policy={config.model.path}")
    items = generate_items(prompts, [(name, model, tokenizer)], num_candidates=stage.num_candidates,
                           max_new_tokens=stage.max_new_tokens, temperature=stage.temperature,
                           seed=config.train.seed, batch_prompts=stage.batch_prompts, progress=config.train.progress,
                           rollout=config.rollout)
    write_jsonl(out, items)
    console.print(f"stage 1: {len(items)} prompts x {stage.num_candidates} candidates -> {out}")


def rank_candidates(config: RLHFConfig, run_dir: Path, out: Path) -> None:
    """Stage 2: preference pairs, from the AI judge or from a labeling-app export."""
    from tether.feedback.generate import read_records, write_jsonl
    from tether.feedback.records import FeedbackItem

    stage = config.rank
    if stage.source == "file":
        source = Path(resolve_bundled(stage.file)) if stage.file else None
        if source is None or not source.exists():
            problem = "is not set" if source is None else f"({source}) does not exist"
            raise ConfigError(f"rank.source is 'file' but rank.file {problem}. "
                              f"Label {run_dir / CANDIDATES} in the labeling app (tether label serve), export the "
                              "preferences (TRL preference or ranking JSONL), set rank.file and run again: "
                              "finished stages are skipped.")
        write_jsonl(out, _rows(source))  # the run keeps its own copy (as JSONL) of what it trained on
        console.print(f"stage 2: preferences from {source} -> {out}")
        return

    from tether.feedback.constitution import load_constitution
    from tether.feedback.judge import judge_items
    from tether.feedback.judge_backends import backend_from_spec
    from tether.feedback.preferences import judgments_to_pairs, preference_rows

    items = read_records(run_dir / CANDIDATES, FeedbackItem)
    backend = backend_from_spec(stage.judge, model=stage.judge_model, tie_margin=stage.tie_margin)
    result = judge_items(items, backend, load_constitution(stage.constitution), progress=config.train.progress)
    write_jsonl(run_dir / JUDGMENTS, result.judgments)
    pairs = judgments_to_pairs(items, result.judgments)
    if not pairs:
        raise TetherError(f"the judge decided none of the {len(items)} items (all ties or inconsistent "
                          f"across the two orders); see {run_dir / JUDGMENTS}. Use more candidates, a "
                          "stronger judge, or rank.source: file.")
    write_jsonl(out, preference_rows(pairs))
    consistency = result.consistency
    console.print(f"stage 2: {len(pairs)} preference pairs from {len(items)} judged items"
                  + (f" (order consistency {consistency:.0%})" if consistency is not None else "") + f" -> {out}")
    if consistency is not None and consistency < 0.5:
        # A judge that flips with the order mostly reads position, not quality: few pairs survive,
        # and the reward model learns little from them.
        console.print(f"[bold yellow]warning: the judge agreed with itself across the two orders on only "
                      f"{consistency:.0%} of pairs; the reward model will be weak. Use a stronger judge "
                      "(rank.judge: openai:URL), more candidates, or rank by hand (rank.source: file).[/]")


def _rows(source: Path) -> list:
    """Every row of a JSONL or parquet file or a saved dataset, or one error naming every problem."""
    rows, problems = [], []
    for _, row, problem in read_rows(source):
        (rows if problem is None else problems).append(row if problem is None else problem)
    if problems:
        raise DataValidationError(problems[0].problem, problems=problems)
    return rows


def check_rlhf(config: RLHFConfig) -> None:
    """What can be checked before any model loads or the run folder is made: ``--resume`` names
    a run that exists, the prompts read, the extra PPO rewards import, the model path exists."""
    from tether.feedback.generate import read_prompts
    from tether.models import load_tokenizer
    from tether.rewards.resolve import reward_specs

    if config.train.resume and not config.run_dir().is_dir():
        raise CheckpointError(f"--resume: no run folder {config.run_dir()} to resume")
    for path in filter(None, (config.data.train, config.data.eval)):
        read_prompts(path)
    reward_specs(config.ppo.rewards)
    load_tokenizer(config.model.path)


def split_by_prompt(path: Path, fraction: float, seed: int, settings: RewardModelSettings
                    ) -> tuple[list[dict], list[dict]]:
    """The rows of a preference (or ranking) file in two parts, training and held out, split by prompt:
    every pair of one prompt lands on the same side, so held-out accuracy is measured on prompts the
    reward model never saw, not on siblings of its training pairs. Of the P distinct prompts,
    round(fraction * P), at least 1 and at most P - 1, are drawn with ``seed``; rows keep their file
    order. Every row is validated first, so errors name this file's own lines."""
    kind = data_kind(str(path), settings)
    rows, problems = [], []
    for location, row, problem in read_rows(path):
        row_problems = [problem] if problem is not None else validate_row(row, kind, location)[1]
        problems.extend(row_problems)
        if not row_problems:
            rows.append(row)
    if problems:
        raise DataValidationError(problems[0].problem, problems=problems)
    keys = [json.dumps(row["prompt"], sort_keys=True) for row in rows]
    prompts = list(dict.fromkeys(keys))  # distinct, in file order
    if len(prompts) < 2:
        raise ConfigError(f"reward_model.heldout_fraction={fraction} holds out whole prompts, but {path} has "
                          f"pairs for {len(prompts)} prompt(s): rank more prompts, or set "
                          "reward_model.heldout_fraction=0 to train on every pair with no held-out check")
    held_out = set(seeded_subset(prompts, min(max(round(fraction * len(prompts)), 1), len(prompts) - 1), seed))
    return ([row for row, key in zip(rows, keys) if key not in held_out],
            [row for row, key in zip(rows, keys) if key in held_out])


def write_split(config: RLHFConfig, run_dir: Path) -> None:
    """Stage 3's data: PREFERENCES split by prompt into PREFERENCES_TRAIN and PREFERENCES_HELD_OUT."""
    from tether.feedback.generate import write_jsonl

    stage = config.reward_model
    train, held_out = split_by_prompt(run_dir / PREFERENCES, stage.heldout_fraction, config.train.seed, stage.reward)
    write_jsonl(run_dir / PREFERENCES_TRAIN, train)
    write_jsonl(run_dir / PREFERENCES_HELD_OUT, held_out)
    console.print(f"stage 3: {len(train)} preference rows to train on, {len(held_out)} held out (whole prompts, "
                  f"reward_model.heldout_fraction={stage.heldout_fraction}) -> {run_dir / PREFERENCES_TRAIN}, "
                  f"{run_dir / PREFERENCES_HELD_OUT}")


def train_stage_reward_model(config: RLHFConfig, run_dir: Path) -> Path:
    """Stage 3: the reward model, as ``tether train reward`` would train it, on the training part of the
    preferences, with the held-out part as ``data.eval`` (its accuracy and ECE go to reward_report.json).
    The split is deterministic, so an interrupted stage resumes on the same rows."""
    stage = config.reward_model
    data = DataSettings(train=str(run_dir / PREFERENCES), max_length=stage.max_length)
    if stage.heldout_fraction > 0:
        distributed.main_only(lambda: write_split(config, run_dir), "splitting the preferences")
        data = DataSettings(train=str(run_dir / PREFERENCES_TRAIN), eval=str(run_dir / PREFERENCES_HELD_OUT),
                            max_length=stage.max_length)
    train = config.train.model_copy(update={
        "run_name": REWARD_RUN, "output_dir": str(run_dir), "batch_size": stage.batch_size, "epochs": stage.epochs,
        "max_steps": stage.max_steps, "eval_every": None, "save_every": None,
        "resume": latest_checkpoint(run_dir / REWARD_RUN / "checkpoints") is not None})
    return train_reward_model(RewardModelConfig(
        model=stage.model or config.model, optim=stage.optim, train=train, reward=stage.reward, data=data))


def ppo_config(config: RLHFConfig, run_dir: Path, reward_model: Path) -> PPOConfig:
    """Stage 4's config: the RLHF run's policy, prompts, optim and train settings; the reward model as
    the (first) reward; held-out prompts from data.eval, else data.train."""
    rewards = [RewardSettings(name=f"reward_model:{reward_model}"), *config.ppo.rewards]
    data = config.data if config.data.eval else config.data.model_copy(update={"eval": config.data.train})
    train = config.train.model_copy(update={
        "run_name": PPO_RUN, "output_dir": str(run_dir),
        "resume": latest_checkpoint(run_dir / PPO_RUN / "checkpoints") is not None})
    return PPOConfig(model=config.model, data=data, optim=config.optim, train=train,
                     ppo=config.ppo.model_copy(update={"rewards": rewards}), rollout=config.rollout)


# ------------------------------------------------------------------------------------------- report

# At or below this held-out pairwise accuracy (chance: 0.5) the reward model has not learned the ranking.
LEARNED_ACCURACY = 0.55


def reward_model_summary(reward_report: dict) -> dict:
    """What stage 3's reward_report.json says about the reward model: its held-out pairwise accuracy
    and calibration (ECE) before and after training, and a plain verdict when it learned nothing.

    ``held_out_accuracy_stderr`` is the binomial sqrt(a (1 - a) / n); pairs of one prompt are
    correlated, so the real uncertainty is somewhat larger."""
    after, before = reward_report.get("held_out_after") or {}, reward_report.get("held_out_before") or {}
    pairs = reward_report.get("held_out_pairs") or 0
    accuracy = after.get("accuracy")
    stderr = math.sqrt(accuracy * (1 - accuracy) / pairs) if accuracy is not None and pairs else None
    summary = {"path": reward_report.get("model"), "train_pairs": reward_report.get("train_pairs"),
               "final_train": reward_report.get("final_train"), "held_out_pairs": pairs,
               "held_out_accuracy": accuracy, "held_out_ece": after.get("ece"), "held_out_accuracy_stderr": stderr,
               "held_out_before": {"accuracy": before.get("accuracy"), "ece": before.get("ece")}}
    if accuracy is None:
        summary["warning"] = ("no held-out pairs (reward_model.heldout_fraction: 0): nothing shows whether the "
                              "reward model learned the ranking")
    elif accuracy <= LEARNED_ACCURACY:
        summary["warning"] = (f"the reward model did not learn the ranking: it orders {accuracy:.0%} of {pairs} "
                              "held-out pairs as ranked (chance: 50%), so PPO optimised noise")
    elif accuracy - 2 * stderr <= 0.5:
        summary["warning"] = (f"held-out accuracy {accuracy:.2f} +- {stderr:.2f} on {pairs} pairs is within noise "
                              "of chance: rank more prompts before trusting the reward model")
    return summary


def rlhf_report(run_dir: Path, seconds: dict[str, float | None]) -> dict:
    """The reward model's held-out accuracy and ECE; held-out reward-model score (proxy), gold reward if
    configured, and KL, before and after PPO."""
    evals = [row for row in read_metrics(run_dir / PPO_RUN) if "eval/proxy_reward" in row]
    if not evals:
        raise TetherError(f"{run_dir / PPO_RUN} logged no held-out evaluation")
    before, after = evals[0], evals[-1]
    rows = {"proxy_reward": "eval/proxy_reward", "gold_reward": "eval/gold_reward", "kl": "eval/kl"}
    report: dict = {"before_step": before["step"], "after_step": after["step"]}
    for name, key in rows.items():
        if key in after:
            report[name] = {"before": before.get(key), "after": after[key]}
    report["reward_hacking_flagged"] = any(row.get("eval/reward_hacking", 0.0) > 0 for row in evals)
    reward_report = run_dir / REWARD_RUN / REWARD_REPORT_FILE
    if reward_report.is_file():
        report["reward_model"] = reward_model_summary(json.loads(reward_report.read_text()))
    stages = {"candidates": run_dir / CANDIDATES, "preferences": run_dir / PREFERENCES,
              "preferences_train": run_dir / PREFERENCES_TRAIN, "preferences_held_out": run_dir / PREFERENCES_HELD_OUT,
              "reward_model": run_dir / REWARD_RUN / "final", "policy": run_dir / PPO_RUN / "final"}
    report["stages"] = {name: str(path) for name, path in stages.items() if path.exists()}
    report["seconds"] = seconds  # None: the stage was already done and skipped
    return report


def print_report(report: dict) -> None:
    from rich.table import Table

    table = Table(title="RLHF: held-out prompts before and after PPO")
    for column in ("metric", f"before (step {report['before_step']})", f"after (step {report['after_step']})"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    labels = {"proxy_reward": "reward-model score (proxy)", "gold_reward": "gold reward", "kl": "KL from start (nats)"}
    for name, label in labels.items():
        if name in report:
            values = report[name]
            table.add_row(label, fmt(values["before"]), fmt(values["after"]))
    console.print(table)

    rm = report.get("reward_model")
    if rm is None:
        return
    if rm["held_out_accuracy"] is not None:
        table = Table(title=f"RLHF: reward model on {rm['held_out_pairs']} held-out pairs (unseen prompts)")
        for column in ("metric", "untrained", "trained"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        stderr = rm["held_out_accuracy_stderr"]
        table.add_row("pairwise accuracy (chance 0.5)", fmt(rm["held_out_before"]["accuracy"]),
                      fmt(rm["held_out_accuracy"]) + (f" ± {stderr:.3f}" if stderr is not None else ""))
        table.add_row("calibration error (ECE)", fmt(rm["held_out_before"]["ece"]), fmt(rm["held_out_ece"]))
        console.print(table)
    if "warning" in rm:
        console.print(f"[bold yellow]warning: {rm['warning']}[/]")


def fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else "n/a"


# ---------------------------------------------------------------------------------------- the run

def run_rlhf(config: RLHFConfig) -> Path:
    """All four stages, skipping those already done; returns the PPO policy's folder."""
    if config.rlhf.rounds > 1 or config.rlhf.trainer == "dpo":  # fragility (issue 22): rounds.py runs them
        from tether.algorithms.rounds import run_rounds

        return run_rounds(config)
    check_rlhf(config)
    run_dir = start_run(config)
    stages = StagedRun("RLHF")
    stages.run("generate", run_dir / CANDIDATES, lambda: generate_candidates(config, run_dir / CANDIDATES),
               rank_0_only=True)
    stages.run("rank", run_dir / PREFERENCES, lambda: rank_candidates(config, run_dir, run_dir / PREFERENCES),
               rank_0_only=True)
    reward_model = run_dir / REWARD_RUN / "final"
    stages.run("reward_model", reward_model, lambda: train_stage_reward_model(config, run_dir),
               done=reward_model.is_dir() and (run_dir / REWARD_RUN / REWARD_REPORT_FILE).is_file(),
               stage_dir=run_dir / REWARD_RUN)
    policy = run_dir / PPO_RUN / "final"
    stages.run("ppo", policy, lambda: train_ppo(ppo_config(config, run_dir, reward_model)), stage_dir=run_dir / PPO_RUN)

    if distributed.is_main():
        report = rlhf_report(run_dir, stages.seconds)
        (run_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        print_report(report)
    distributed.barrier()
    console.print(f"RLHF done: policy {policy}; report {run_dir / REPORT}")
    return policy
