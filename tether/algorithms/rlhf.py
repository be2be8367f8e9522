"""The RLHF pipeline as it is taught (Christiano et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022):

    1. generate   K candidate responses per prompt from the policy          1-candidates.jsonl
    2. rank       them: an AI judge under a constitution, or a labeling-app  2-judgments.jsonl
                  export (TRL preference or ranking JSONL)                   2-preferences.jsonl
    3. reward     a Bradley-Terry reward model on those preferences          3-reward-model/final
    4. PPO        the policy against the reward model, KL-penalised          4-ppo/final
    report        held-out reward-model score and KL before/after PPO        report.json

    tether train rlhf --config recipes/rlhf-ppo.yaml

Every stage writes its output into the run folder, and a rerun skips the stages whose output is
there (delete a stage's output to redo it; an interrupted training stage resumes from its last
checkpoint). With ``rank.source: file`` and no export yet, the run stops after stage 1: label
1-candidates.jsonl in the labeling app, export the preferences, set ``rank.file`` and run again.

Under torchrun, stages 1 and 2 (generation, judging) run on rank 0 while the other ranks wait, and
the two trainers (stages 3 and 4) run on every rank, data-parallel (docs/scaling.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from tether.algorithms.ppo import PPOConfig, PPOSettings, train_ppo
from tether.algorithms.reward import REPORT_FILE as REWARD_REPORT_FILE
from tether.algorithms.reward import RewardModelConfig, RewardModelSettings, train_reward_model
from tether.config import (DataSettings, ModelSettings, OptimSettings, RewardSettings, RunConfig, Section,
                           resolve_bundled)
from tether.data import seeded_subset
from tether.engine import console, distributed, latest_checkpoint, read_metrics, start_run
from tether.errors import ConfigError, TetherError
from tether.feedback.constitution import DEFAULT_CONSTITUTION

CANDIDATES = "1-candidates.jsonl"
JUDGMENTS = "2-judgments.jsonl"
PREFERENCES = "2-preferences.jsonl"
REWARD_RUN = "3-reward-model"
PPO_RUN = "4-ppo"
REPORT = "report.json"


class GenerateStage(Section):
    num_candidates: int = Field(2, ge=2)  # responses per prompt to compare
    max_prompts: int | None = Field(None, gt=0)  # N prompts of data.train drawn with train.seed; None: all
    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(1.0, gt=0)
    batch_prompts: int = Field(4, gt=0)


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


class RLHFConfig(RunConfig):
    """``model`` is the policy; ``data.train`` the prompts (for stage 1 and for PPO), ``data.eval``
    held-out prompts for the before/after report; ``optim`` and ``train`` drive the PPO stage
    (``train.max_steps`` PPO steps) and name the run folder."""

    generate: GenerateStage = GenerateStage()
    rank: RankStage = RankStage()
    reward_model: RewardModelStage = RewardModelStage()
    ppo: PPOSettings = PPOSettings()  # ppo.rewards: extra rewards added to the trained reward model


# ------------------------------------------------------------------------------------------- stages

def generate_candidates(config: RLHFConfig, out: Path) -> None:
    """Stage 1: ``num_candidates`` samples per prompt from the starting policy, as FeedbackItems."""
    from tether.feedback.generate import generate_items, load_named_model, read_prompts, write_jsonl

    stage = config.generate
    prompts = seeded_subset(read_prompts(config.data.train), stage.max_prompts, config.train.seed)
    name, model, tokenizer = load_named_model(f"policy={config.model.path}")
    items = generate_items(prompts, [(name, model, tokenizer)], num_candidates=stage.num_candidates,
                           max_new_tokens=stage.max_new_tokens, temperature=stage.temperature,
                           seed=config.train.seed, batch_prompts=stage.batch_prompts, progress=config.train.progress)
    write_jsonl(out, items)
    console.print(f"stage 1: {len(items)} prompts x {stage.num_candidates} candidates -> {out}")


def rank_candidates(config: RLHFConfig, run_dir: Path, out: Path) -> None:
    """Stage 2: preference pairs, from the AI judge or from a labeling-app export."""
    from tether.feedback.generate import read_records, write_jsonl
    from tether.feedback.records import FeedbackItem

    stage = config.rank
    if stage.source == "file":
        source = Path(resolve_bundled(stage.file)) if stage.file else None
        if source is None or not source.is_file():
            problem = "is not set" if source is None else f"({source}) does not exist"
            raise ConfigError(f"rank.source is 'file' but rank.file {problem}. "
                              f"Label {run_dir / CANDIDATES} in the labeling app (tether label serve), export the "
                              "preferences (TRL preference or ranking JSONL), set rank.file and run again: "
                              "finished stages are skipped.")
        temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.copyfile(source, temporary)  # the run keeps its own copy of what it trained on
        os.replace(temporary, out)
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


def train_stage_reward_model(config: RLHFConfig, run_dir: Path) -> Path:
    """Stage 3: the reward model, as ``tether train reward`` would train it."""
    stage = config.reward_model
    train = config.train.model_copy(update={
        "run_name": REWARD_RUN, "output_dir": str(run_dir), "batch_size": stage.batch_size, "epochs": stage.epochs,
        "max_steps": stage.max_steps, "eval_every": None, "save_every": None,
        "resume": latest_checkpoint(run_dir / REWARD_RUN / "checkpoints") is not None})
    return train_reward_model(RewardModelConfig(
        model=stage.model or config.model, optim=stage.optim, train=train, reward=stage.reward,
        data=DataSettings(train=str(run_dir / PREFERENCES), max_length=stage.max_length)))


def ppo_config(config: RLHFConfig, run_dir: Path, reward_model: Path) -> PPOConfig:
    """Stage 4's config: the RLHF run's policy, prompts, optim and train settings; the reward model as
    the (first) reward; held-out prompts from data.eval, else data.train."""
    rewards = [RewardSettings(name=f"reward_model:{reward_model}"), *config.ppo.rewards]
    data = config.data if config.data.eval else config.data.model_copy(update={"eval": config.data.train})
    train = config.train.model_copy(update={
        "run_name": PPO_RUN, "output_dir": str(run_dir),
        "resume": latest_checkpoint(run_dir / PPO_RUN / "checkpoints") is not None})
    return PPOConfig(model=config.model, data=data, optim=config.optim, train=train,
                     ppo=config.ppo.model_copy(update={"rewards": rewards}))


# ------------------------------------------------------------------------------------------- report

def rlhf_report(run_dir: Path, seconds: dict[str, float | None]) -> dict:
    """Held-out reward-model score (proxy), gold reward if configured, and KL, before and after PPO."""
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
        rm = json.loads(reward_report.read_text())
        report["reward_model"] = {"path": rm.get("model"), "train_pairs": rm.get("train_pairs"),
                                  "final_train": rm.get("final_train")}
    report["stages"] = {"candidates": str(run_dir / CANDIDATES), "preferences": str(run_dir / PREFERENCES),
                        "reward_model": str(run_dir / REWARD_RUN / "final"), "policy": str(run_dir / PPO_RUN / "final")}
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
            table.add_row(label, *(f"{v:.3f}" if isinstance(v, float) and math.isfinite(v) else "n/a"
                                   for v in (values["before"], values["after"])))
    console.print(table)


# ---------------------------------------------------------------------------------------- the run

def run_rlhf(config: RLHFConfig) -> Path:
    """All four stages, skipping those already done; returns the PPO policy's folder."""
    run_dir = start_run(config)
    seconds: dict[str, float | None] = {}

    def stage(name: str, done: bool, work, *, rank_0_only: bool = False) -> None:
        # all_true: every rank has looked for the output before any rank writes it, and all agree.
        if distributed.all_true(done):
            console.print(f"[dim]{name}: already done, skipped[/]")
            seconds[name] = None
            return
        started = time.perf_counter()
        if rank_0_only:  # generation and judging are not trainers: rank 0 runs them, the rest wait
            distributed.main_only(work, f"RLHF stage {name!r}")
        else:  # the trainers run on every rank (DDP / FSDP)
            work()
        seconds[name] = round(time.perf_counter() - started, 1)

    stage("generate", (run_dir / CANDIDATES).is_file(),
          lambda: generate_candidates(config, run_dir / CANDIDATES), rank_0_only=True)
    stage("rank", (run_dir / PREFERENCES).is_file(),
          lambda: rank_candidates(config, run_dir, run_dir / PREFERENCES), rank_0_only=True)
    reward_model = run_dir / REWARD_RUN / "final"
    stage("reward_model", reward_model.is_dir() and (run_dir / REWARD_RUN / REWARD_REPORT_FILE).is_file(),
          lambda: train_stage_reward_model(config, run_dir))
    policy = run_dir / PPO_RUN / "final"
    stage("ppo", policy.is_dir(), lambda: train_ppo(ppo_config(config, run_dir, reward_model)))

    if distributed.is_main():
        report = rlhf_report(run_dir, seconds)
        (run_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        print_report(report)
    distributed.barrier()
    console.print(f"RLHF done: policy {policy}; report {run_dir / REPORT}")
    return policy
