"""What one RL step needs, shared by GRPO and PPO: the prompts and their reward columns, the
reference policy, the seeded rollout, the rewards, and the held-out reward-hacking monitor.

Each trainer keeps only its own update rule (GRPO's group advantages, PPO's critic and GAE);
statistics over every rank's rows are in ``rl_pooled.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tether.algorithms.common import adapters_off_is_reference
from tether.audit.reward_hacking import RewardHackingMonitor
from tether.config import ModelSettings, RunConfig
from tether.data import load_records, seeded_subset
from tether.engine import TrainingSession, check_run, distributed
from tether.envs.rollout import env_task, rollout_episodes
from tether.errors import ConfigError
from tether.losses.logprobs import shared_prompt_token_logps
from tether.models import load_model, load_tokenizer, reference_mode
from tether.rewards.base import RewardSpec, check_reward_columns, combine_rewards, reward_columns
from tether.rewards.resolve import reward_specs
from tether.rollout.sampler import RolloutBatch, RolloutConfig

# ------------------------------------------------------------------------------------ prompts

@dataclass
class RLData:
    """What a run checks before the model loads: tokenizer, rewards and prompts."""
    tokenizer: object
    specs: list[RewardSpec]
    gold_specs: list[RewardSpec]
    train: list
    held_out: list


def load_rl_data(config: RunConfig, settings, section: str, eval_prompts: int | None = None) -> RLData:
    """``check_run``, the rewards and TRL's prompt-only rows (``answer`` and other columns go to the
    rewards, checked against them here), all before the run folder exists or the model loads.
    ``settings`` is the trainer's section (``rewards``, ``gold``); ``eval_prompts`` draws that many
    held-out prompts with ``train.seed``."""
    check_run(config)
    specs = reward_specs(settings.rewards)
    gold_specs = reward_specs(settings.gold.rewards) if settings.gold is not None else []
    tokenizer = load_tokenizer(config.model.path)

    def load(path, scored_by):
        rows = load_records(path, "prompt", tokenizer=tokenizer, truncation=config.data.truncation,
                            max_prompt_tokens=config.data.max_prompt_tokens)
        if getattr(settings, "environment", None) is None:  # agents: environments score episodes themselves
            check_reward_columns(scored_by, list(reward_columns(rows)), path)
        return rows

    train = load(config.data.train, specs)
    held_out = load(config.data.eval, specs + gold_specs) if config.data.eval else []
    held_out = seeded_subset(held_out, eval_prompts, config.train.seed) if held_out else held_out
    if settings.gold is not None and not held_out:
        raise ConfigError(f"{section}.gold is scored on held-out prompts: set data.eval")
    return RLData(tokenizer, specs, gold_specs, train, held_out)


# ------------------------------------------------------------------------- log-probs, reference

def completion_token_logps(model, rollout: RolloutBatch, rows: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of every completion token, teacher-forced, each distinct prompt among
    ``rows`` run through the model once (``shared_prompt_token_logps``). Shape: (rows, L)."""
    rows = torch.arange(len(rollout), device=rollout.prompt_ids.device) if rows is None else rows
    prompts, prompt_of_row = torch.unique(rollout.prompt_index[rows], return_inverse=True)
    # Any row of a prompt holds its tokens; scatter keeps one per prompt.
    first_row = torch.empty(len(prompts), dtype=torch.long, device=rows.device).scatter_(0, prompt_of_row, rows)
    prompt_mask = rollout.prompt_mask[first_row]  # (U, S)
    start = int(prompt_mask.any(0).long().argmax())  # drop columns that are padding in every prompt
    return shared_prompt_token_logps(model, rollout.prompt_ids[first_row, start:], prompt_mask[:, start:],
                                     prompt_of_row, rollout.completion_ids[rows],
                                     rollout.completion_mask[rows])  # (rows, L)


def reference_logps(model, reference, rollout: RolloutBatch, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The reference policy's log-probs: the LoRA-disabled base, or a separate frozen model.
    Call it under the autocast of the policy forward it is compared with. Shape: (rows, L)."""
    with torch.no_grad():
        if reference is None:
            with reference_mode(model):
                return completion_token_logps(model, rollout, rows)
        return completion_token_logps(reference, rollout, rows)


class Reference:
    """The policy the KL is measured against. With LoRA it is the policy's base (adapters off),
    free; otherwise a frozen copy of the starting model, loaded only when the KL has a weight
    (``needed``): no KL weight and no LoRA means no reference at all (``available`` is False)."""

    def __init__(self, policy, settings: ModelSettings, needed: bool):
        self.policy = policy
        self.model = None
        if needed and not adapters_off_is_reference(settings):
            self.model, _ = load_model(settings.path)
            self.model.requires_grad_(False)
        self.available = self.model is not None or adapters_off_is_reference(settings)

    def to(self, device) -> None:
        if self.model is not None:
            self.model.to(device)  # a full frozen copy on every rank, also under FSDP (docs/scaling.md)

    def logps(self, rollout: RolloutBatch, rows: torch.Tensor | None = None) -> torch.Tensor:
        return reference_logps(self.policy, self.model, rollout, rows)


# ---------------------------------------------------------------------------- rollout, rewards

def step_prompts(plan, step: int, rows_per_prompt: int) -> tuple[list[int], slice]:
    """This rank's prompt indices of the step (a contiguous block under torchrun) and its rows
    among the step's P*N completions."""
    indices, block = distributed.local_block(plan.micro_batches(step)[0])
    return indices, slice(block.start * rows_per_prompt, block.stop * rows_per_prompt)


def sample_rollout(sampler, session: TrainingSession, prompts, settings, step: int, episodes=None) -> RolloutBatch:
    """``settings.num_generations`` completions per prompt, sharing the prompt's KV cache, with a
    per-step seed (exact resume) and one stream per rank (rank 0 of 1: the plain seed). Under FSDP
    the weights are gathered whole, since ranks decode different numbers of tokens. ``episodes``
    (``episodes(tasks, rollout_config)``) runs multi-turn episodes on ``prompts`` (environment tasks)."""
    world = session.world
    config = RolloutConfig(
        num_samples=settings.num_generations, temperature=settings.temperature, top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens, stop=settings.stop,
        seed=(session.config.train.seed * 1_000_003 + step) * world.size + world.rank)
    with torch.no_grad(), session.autocast(), distributed.gathered_params(session.module):
        return episodes(prompts, config) if episodes is not None else sampler.sample(prompts, config)


def sample_and_score(sampler, tokenizer, session: TrainingSession, tasks, settings, step: int, specs):
    """The step's rollout and its rewards ``(rollout, totals, per-reward values, reward metrics)``:
    completions scored by the reward functions, or, with ``settings.environment``, multi-turn
    episodes whose return is the reward (tether/envs/rollout.py)."""
    if settings.environment is None:
        rollout = sample_rollout(sampler, session, [t.prompt for t in tasks], settings, step)
        return rollout, *score_rollout(specs, tasks, rollout, settings.num_generations, settings.on_reward_error)
    rollout = sample_rollout(sampler, session, [env_task(t) for t in tasks], settings, step,
                             episodes=lambda env_tasks, config: rollout_episodes(
                                 sampler, tokenizer, env_tasks, settings.environment, config))
    return rollout, rollout.rewards, {"environment": rollout.rewards}, {}


def count_throughput(session: TrainingSession, rollout: RolloutBatch, group: int, updates: int, started: float,
                     sampled: float, trained: torch.Tensor | None = None) -> None:
    """Add this step to the run's tokens/s and MFU, by phase: sampling from ``started`` to ``sampled``
    (perf_counter times), the updates of the ``trained`` rows (default all) from then to now
    (engine/throughput.py)."""
    session.throughput.add_rl_step(rollout.prompt_mask.sum(1).tolist(), rollout.completion_mask.sum(1).tolist(),
                                   group, updates, sampled - started, time.perf_counter() - sampled,
                                   None if trained is None else trained.tolist())


def score_rollout(specs, tasks, rollout: RolloutBatch, num_generations: int, on_error: str):
    """The weighted rewards of each completion: (totals, per-reward values, reward metrics)."""
    prompts = [t.prompt for t in tasks for _ in range(num_generations)]
    return combine_rewards(specs, prompts, rollout.texts, reward_columns(tasks, num_generations),
                           on_error=on_error)


def held_out_monitor(config: RunConfig, settings, data: RLData, start_step: int, title: str,
                     samples_per_prompt: int = 1) -> RewardHackingMonitor:
    """The reward-hacking watch on data.eval: proxy and gold rewards and KL, restored on resume.
    Without ``settings.gold`` it reports the proxy reward and KL alone."""
    gold = settings.gold
    monitor = RewardHackingMonitor(
        config.run_dir(), [t.prompt for t in data.held_out], reward_columns(data.held_out), data.specs,
        data.gold_specs, max_new_tokens=settings.eval_max_new_tokens or settings.max_new_tokens,
        stop=settings.stop, window=gold.window if gold else 3, min_change=gold.min_change if gold else 0.0,
        seed=config.train.seed, title=title, samples_per_prompt=samples_per_prompt)
    monitor.restore(start_step)
    return monitor
