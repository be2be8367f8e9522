"""GRPO and its family (Dr. GRPO, DAPO, GSPO, RLOO) with verifiable rewards.

    tether train grpo --config recipes/arith-grpo.yaml grpo.loss_type=dapo

One step: sample ``num_generations`` completions for each of ``prompts_per_step`` prompts,
score them with the rewards, turn rewards into group-relative advantages, then make
``updates_per_rollout`` clipped policy updates on that batch.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from tether.algorithms.common import load_policy
from tether.algorithms.rl_pooled import pool_scores, pooled_masked_mean
from tether.algorithms.rl_step import (
    Reference,
    completion_token_logps,
    count_throughput,
    held_out_monitor,
    load_rl_data,
    sample_and_score,
    step_prompts,
)
from tether.config import GoldSettings, RewardSettings, RunConfig, Section
from tether.engine import BatchPlan, TrainingSession, console, distributed, progress_bar, start_run
from tether.engine.batches import shuffled_groups
from tether.engine.plots import plot_metrics
from tether.envs.rollout import EnvironmentSettings, TrajectoryLog, env_task, rollout_episodes, trained_token_mask
from tether.losses.grpo import (
    group_advantages,
    overlong_penalty,
    policy_loss,
    rloo_advantages,
    zero_variance_groups,
)
from tether.losses.importance import truncated_importance_weights
from tether.models import evaluation_mode
from tether.rewards.base import combine_rewards, reward_columns
from tether.rollout.backends import RolloutSettings, make_sampler
from tether.rollout.sampler import RolloutBatch, RolloutConfig, TransformersSampler


class GRPOSettings(Section):
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "gspo"] = "grpo"  # how token losses are averaged (as in TRL)
    num_generations: int = Field(8, gt=1)  # completions per prompt (the group)
    prompts_per_step: int = Field(4, gt=0)  # prompts sampled per step
    max_new_tokens: int = Field(64, gt=0)  # completion length limit
    temperature: float = Field(1.0, gt=0)  # sampling temperature
    top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling
    stop: list[str] = []  # strings that end a completion
    updates_per_rollout: int = Field(1, gt=0)  # policy updates on each rollout batch (clipped)
    minibatch_rows: int | None = Field(None, gt=0)  # rows per backward pass; None: all at once
    epsilon_low: float = Field(0.2, gt=0)  # policy ratio clip below 1
    epsilon_high: float | None = Field(None, gt=0)  # DAPO's clip-higher uses 0.28
    beta: float = Field(0.0, ge=0)  # KL-to-reference weight; 0 loads no reference model
    # "group": (r - mean) / std per group (GRPO); "none": r - mean (Dr. GRPO); "batch": batch std.
    advantage_scale: Literal["group", "batch", "none"] = "group"
    rloo: bool = False  # leave-one-out baseline instead of the group mean
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal
    overlong_buffer: int | None = Field(None, ge=0)  # DAPO soft overlong penalty width, tokens
    # reward functions summed with their weights: built-ins or "package.module:function"
    rewards: list[RewardSettings] = [RewardSettings(name="math_answer"),
                                     RewardSettings(name="think_answer_format", weight=0.5)]
    # "score_failed": a sample whose reward function raises scores 0 (counted) instead of stopping the run
    on_reward_error: Literal["raise", "score_failed"] = "raise"
    eval_max_new_tokens: int | None = Field(None, gt=0)  # default: max_new_tokens
    gold: GoldSettings | None = None  # reward-hacking watch on data.eval
    # agents: multi-turn episodes with tools instead of single completions (docs/agents.md)
    environment: EnvironmentSettings | None = None


class GRPOConfig(RunConfig):
    grpo: GRPOSettings = GRPOSettings()
    rollout: RolloutSettings = RolloutSettings()  # the sampling engine (transformers or vllm)


def compute_advantages(rewards: torch.Tensor, config: GRPOConfig) -> torch.Tensor:
    settings = config.grpo
    if settings.rloo:
        return rloo_advantages(rewards, settings.num_generations)
    return group_advantages(rewards, settings.num_generations, scale=settings.advantage_scale)


def answer_tasks(model, tokenizer, records, specs, config: GRPOConfig) -> list[dict]:
    """Greedy answers to held-out tasks, one row per task: its id, the completion, its length in
    tokens and each reward's score (None where a reward does not apply)."""
    sampler = TransformersSampler(model, tokenizer)
    settings = config.grpo
    rollout = sampler.sample([r.prompt for r in records], eval_rollout_config(settings))
    _, per_reward, _ = combine_rewards(specs, [r.prompt for r in records], rollout.texts,
                                       reward_columns(records), on_error="score_failed")
    lengths = rollout.completion_mask.sum(1).tolist()
    return [{"id": record.id, "completion": text, "completion_tokens": int(length),
             **{name: values[i] for name, values in per_reward.items()}}
            for i, (record, text, length) in enumerate(zip(records, rollout.texts, lengths))]


def mean_scores(rows: list[dict], reward_names) -> dict[str, float]:
    """The mean of each reward over ``answer_tasks`` rows (accuracy for math_answer), and the
    mean completion length."""
    metrics = {}
    for name in reward_names:
        scored = [row[name] for row in rows if row[name] is not None]
        metrics[name] = sum(scored) / max(len(scored), 1)
    metrics["completion_length"] = sum(row["completion_tokens"] for row in rows) / max(len(rows), 1)
    return metrics


def policy_updates(session: TrainingSession, rollout: RolloutBatch, advantages: torch.Tensor, rows: torch.Tensor,
                   reference: Reference, settings: GRPOSettings, step: int
                   ) -> tuple[dict[str, float], torch.Tensor | None, torch.Tensor]:
    """``updates_per_rollout`` clipped policy updates on this rank's ``rows`` of the rollout, in parts
    of ``minibatch_rows``; returns the metrics (summed over ranks), the old log-probs of the trained
    rows (None when no row was trained) and those rows. Shape: advantages (b,), rows (r,)."""
    mask = trained_token_mask(rollout)  # (b, L); agents: tool outputs are not trained
    importance_cap = session.config.rollout.importance_cap
    chunk = settings.minibatch_rows or max(len(rows), 1)
    total_rows = distributed.all_reduce_sum(len(rows))
    num_tokens = distributed.all_reduce_sum(int(mask[rows].sum()))
    parts = [rows[start:start + chunk] for start in range(0, len(rows), chunk)]
    # The reference is scored part by part under the policy's autocast: the same rows, shapes and
    # precision as the policy forward it is compared with, so under bf16 the KL of an untrained
    # policy is exactly 0 rather than bf16 rounding noise.
    ref_parts = None
    if settings.beta > 0:
        with session.autocast():
            ref_parts = [reference.logps(rollout, part) for part in parts]
    # The old log-probs are the trainer's own, from the first update's forward (no optimizer step
    # has run yet, so they are the sampling weights): the sampler's incremental decoding rounds
    # differently under bf16, and a ratio of 1 on policy must not depend on that.
    old_parts: list[torch.Tensor] = []
    # Ranks keep different numbers of rows (dynamic sampling); every rank still joins each
    # gradient collective, with zero-weight passes where it has run out of rows.
    passes = distributed.lockstep_passes(len(parts), session.model)
    metrics: dict[str, float] = {}
    optimizer_metrics: dict[str, float] = {}
    for update in range(settings.updates_per_rollout if total_rows else 0):
        for index in range(passes):
            real = index < len(parts)
            part = parts[index] if real else torch.zeros(1, dtype=torch.long)
            with session.autocast(), session.gradient_sync(index == passes - 1):
                logps = completion_token_logps(session.model, rollout, part)  # (rows, L)
                if update == 0 and real:
                    old_parts.append(logps.detach())
                old = old_parts[index] if real else logps.detach()  # a zero-weight pass: any value
                ref = None if ref_parts is None else ref_parts[index] if real else old
                # vLLM's log-probs differ from the trainer's: weigh tokens by their ratio (TIS)
                weights = truncated_importance_weights(old, rollout.model_logps[part], importance_cap)
                loss, loss_metrics = policy_loss(
                    logps, old, advantages[part], mask[part],
                    loss_type=settings.loss_type, epsilon_low=settings.epsilon_low,
                    epsilon_high=settings.epsilon_high, beta=settings.beta, ref_logps=ref,
                    max_completion_length=settings.max_new_tokens, token_weights=weights,
                    num_tokens=num_tokens if settings.loss_type == "dapo" else None)
            # dapo already divides by the batch's token count; others average over rows.
            share = 1.0 if settings.loss_type == "dapo" else len(part) / total_rows
            session.backward(loss, step, share if real else 0.0)
            if real:
                weight = len(part) / total_rows / settings.updates_per_rollout
                metrics["loss"] = metrics.get("loss", 0.0) + loss.item() * share / settings.updates_per_rollout
                for key, value in loss_metrics.items():
                    metrics[key] = metrics.get(key, 0.0) + float(value) * weight
        optimizer_metrics = session.optimizer_step(step, total_rows)
    metrics = {**distributed.sum_metrics(metrics), **optimizer_metrics, "rows_trained": float(total_rows)}
    trained = torch.cat(parts) if old_parts else rows
    return metrics, torch.cat(old_parts) if old_parts else None, trained


def eval_rollout_config(settings: GRPOSettings) -> RolloutConfig:
    return RolloutConfig(num_samples=1, temperature=0.0, stop=settings.stop,
                         max_new_tokens=settings.eval_max_new_tokens or settings.max_new_tokens)


def evaluate_tasks(model, tokenizer, records, specs, config: GRPOConfig) -> dict[str, float]:
    """Greedy answers to held-out tasks; the mean of each reward (accuracy for math_answer)."""
    settings = config.grpo
    if settings.environment is not None:  # agents: the episode's return is the score
        rollout = rollout_episodes(TransformersSampler(model, tokenizer), tokenizer, [env_task(r) for r in records],
                                   settings.environment, eval_rollout_config(settings))
        return {"environment_return": sum(rollout.rewards) / max(len(rollout.rewards), 1),
                "tool_calls": sum(t["tool_calls"] for t in rollout.trajectories) / max(len(records), 1)}
    return mean_scores(answer_tasks(model, tokenizer, records, specs, config), [spec.name for spec in specs])


def rollout_metrics(rollout: RolloutBatch, rewards: torch.Tensor, lengths: torch.Tensor, truncated: int,
                    flat_groups: torch.Tensor, old_logps: torch.Tensor | None, trained: torch.Tensor,
                    settings: GRPOSettings) -> dict[str, float]:
    """The step's rewards, lengths, groups and sampler diagnostics, over every rank's rows."""
    mask = rollout.completion_mask.bool()
    metrics = {
        "reward/mean": rewards.mean().item(), "reward/std": rewards.std().item(),
        "frac_zero_variance_groups": flat_groups.float().mean().item(),
        "completion_length": lengths.float().mean().item(),
        "frac_truncated": truncated / len(rewards),
        "sampling_kl": pooled_masked_mean(rollout.model_logps - rollout.sampling_logps, mask)
        if settings.temperature != 1.0 or settings.top_p < 1.0 else 0.0,
    }
    if old_logps is not None:  # how far the sampler's log-probs are from the trainer's (bf16: rounding)
        gap = (old_logps - rollout.model_logps[trained]).abs()
        metrics["logps/sampler_gap"] = pooled_masked_mean(gap, mask[trained])
    return metrics


def train_grpo(config: GRPOConfig) -> Path:
    settings = config.grpo
    data = load_rl_data(config, settings, "grpo")  # checked before the model loads or the run folder exists
    run_dir = start_run(config)
    model, tokenizer = load_policy(config.model, run_dir)
    console.print(f"{len(data.train)} training tasks" + (f", {len(data.held_out)} held out" if data.held_out else ""))
    reference = Reference(model, config.model, needed=settings.beta > 0)
    plan = BatchPlan(shuffled_groups(len(data.train), settings.prompts_per_step), seed=config.train.seed, grad_accum=1,
                     max_steps=config.train.max_steps, epochs=config.train.epochs)
    session = TrainingSession(model, config, plan.total_steps,
                              optimizer_steps=plan.total_steps * settings.updates_per_rollout)
    reference.to(session.world.device)
    sampler = make_sampler(model, tokenizer, config.rollout, bf16=config.train.bf16)
    monitor = (held_out_monitor(config, settings, data, session.start_step, f"GRPO {config.train.run_name}")
               if settings.gold is not None else None)

    def evaluate(step: int) -> dict[str, float]:  # on rank 0 alone, with whole weights (on_main)
        with evaluation_mode(model), torch.no_grad(), session.autocast():
            if settings.environment is not None:  # agents
                return {f"eval/{key}": value for key, value in
                        evaluate_tasks(model, tokenizer, data.held_out, data.specs, config).items()}
            rows = answer_tasks(model, tokenizer, data.held_out, data.specs, config)
            # Every answer is kept, so a change in accuracy can be read and paired task by task.
            answers = run_dir / "heldout_answers" / f"step-{step:05d}.jsonl"
            answers.parent.mkdir(exist_ok=True)
            answers.write_text("".join(json.dumps(row) + "\n" for row in rows))
            metrics = mean_scores(rows, [spec.name for spec in data.specs])
            metrics = {f"eval/{key}": value for key, value in metrics.items()}
            if monitor is not None:
                metrics.update(monitor.evaluate(model, tokenizer, step,
                                                reference.logps if reference.available else None))
        return metrics

    trajectory_log = (TrajectoryLog(run_dir, session.start_step if config.train.resume else None)
                      if settings.environment is not None and settings.environment.save_trajectories
                      and session.world.is_main else None)  # agents
    if data.held_out and session.start_step == 0:
        session.log(0, distributed.on_main(model, lambda: evaluate(0)) or {})

    model.train()
    n = settings.num_generations
    with progress_bar(f"grpo {config.train.run_name}", plan.total_steps, completed=session.start_step,
                      enabled=config.train.progress) as bar:
        for step in range(session.start_step, plan.total_steps):
            indices, here = step_prompts(plan, step, n)  # this rank's prompts, and its rows of the step
            batch = [data.train[i] for i in indices]
            started = time.perf_counter()
            rollout, totals, per_reward, metrics = sample_and_score(sampler, tokenizer, session, batch, settings,
                                                                    step, data.specs)
            sampled = time.perf_counter()

            # ---- rewards and advantages, over every rank's groups ------------------------------
            rewards, lengths, metrics, truncated = pool_scores(  # (P*N,) each, all prompts of the step
                totals, per_reward, metrics, rollout.completion_mask.sum(1).cpu(),
                sum(r == "length" for r in rollout.finish_reasons))
            if settings.overlong_buffer is not None:
                rewards = rewards + overlong_penalty(lengths, settings.max_new_tokens, settings.overlong_buffer)
            advantages = compute_advantages(rewards, config)  # (P*N,)
            flat_groups = zero_variance_groups(rewards, n)  # (P,)
            keep = torch.ones(len(rewards), dtype=torch.bool)
            if settings.dynamic_sampling:
                keep = ~flat_groups.repeat_interleave(n)  # a group with equal rewards teaches nothing
            rows = keep[here].nonzero().squeeze(1)

            update_metrics, old_logps, trained = policy_updates(
                session, rollout, advantages[here].to(session.world.device), rows, reference, settings, step)
            count_throughput(session, rollout, n, settings.updates_per_rollout, started, sampled, trained)
            metrics.update(update_metrics)
            metrics.update(rollout_metrics(rollout, rewards, lengths, truncated, flat_groups, old_logps, trained,
                                           settings))
            done = step + 1
            if trajectory_log is not None:  # agents
                trajectory_log.write(done, rollout.trajectories)
            wants_eval = data.held_out and session.eval_due(done, config.train.eval_every)
            if wants_eval:
                metrics.update(distributed.on_main(model, functools.partial(evaluate, done)) or {})
            if wants_eval or session.should_log(done):
                session.log(done, metrics)
            bar.advance(1, status=f"reward {metrics['reward/mean']:.3f}")
            session.end_step(done)
    session.close()
    sampler.close()  # vLLM: free the engine before the next stage starts one (rlhf rounds, cai)

    if session.world.is_main:
        plot_metrics(run_dir, ["reward/mean", "eval/math_answer", "eval/think_answer_format"],
                     run_dir / "curves.png", title=f"GRPO {config.train.run_name}")
    final_dir = run_dir / "final"
    distributed.save_final_model(model, tokenizer, final_dir, config=config, algorithm="grpo")
    console.print(f"GRPO done; model saved to {final_dir}; curves in {run_dir / 'curves.png'}")
    return final_dir
