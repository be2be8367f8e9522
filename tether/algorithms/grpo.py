"""GRPO and its family (Dr. GRPO, DAPO, GSPO, RLOO) with verifiable rewards.

    tether train grpo --config recipes/arith-grpo.yaml grpo.loss_type=dapo

One step: sample ``num_generations`` completions for each of ``prompts_per_step`` prompts,
score them with the rewards, turn rewards into group-relative advantages, then make
``updates_per_rollout`` clipped policy updates on that batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from tether.algorithms.common import adapters_off_is_reference, load_policy
from tether.audit.reward_hacking import RewardHackingMonitor
from tether.config import GoldSettings, RewardSettings, RunConfig, Section
from tether.data import load_records
from tether.engine import BatchPlan, TrainingSession, check_run, console, distributed, progress_bar, start_run
from tether.engine.batches import shuffled_groups
from tether.engine.plots import plot_metrics
from tether.errors import ConfigError
from tether.losses.grpo import (group_advantages, overlong_penalty, policy_loss, rloo_advantages,
                                truncated_importance_weights, zero_variance_groups)
from tether.losses.kl import masked_mean
from tether.losses.logprobs import shared_prompt_token_logps
from tether.models import load_tokenizer, reference_mode
from tether.rewards.base import _mean_std as mean_std
from tether.rewards.base import check_reward_columns, combine_rewards
from tether.rewards.resolve import reward_specs
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


class GRPOConfig(RunConfig):
    grpo: GRPOSettings = GRPOSettings()
    rollout: RolloutSettings = RolloutSettings()  # the sampling engine (transformers or vllm)


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


def reward_columns(tasks, repeat: int = 1) -> dict[str, list]:
    """The dataset columns reward functions receive, one value per row: ``answer`` (when any task
    has one: prompt-only data has none) and every other column (None where a row lacks it)."""
    columns = {}
    if any(t.answer is not None for t in tasks):
        columns["answer"] = [t.answer for t in tasks for _ in range(repeat)]
    for key in dict.fromkeys(key for t in tasks for key in t.extras):
        columns[key] = [t.extras.get(key) for t in tasks for _ in range(repeat)]
    return columns


def compute_advantages(rewards: torch.Tensor, config: GRPOConfig) -> torch.Tensor:
    settings = config.grpo
    if settings.rloo:
        return rloo_advantages(rewards, settings.num_generations)
    return group_advantages(rewards, settings.num_generations, scale=settings.advantage_scale)


def reference_logps(model, reference, rollout: RolloutBatch, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The reference policy's log-probs: the LoRA-disabled base, or a separate frozen model.
    Call it under the autocast of the policy forward it is compared with. Shape: (rows, L)."""
    with torch.no_grad():
        if reference is None:
            with reference_mode(model):
                return completion_token_logps(model, rollout, rows)
        return completion_token_logps(reference, rollout, rows)


def evaluate_tasks(model, tokenizer, records, specs, config: GRPOConfig) -> dict[str, float]:
    """Greedy answers to held-out tasks; the mean of each reward (accuracy for math_answer)."""
    sampler = TransformersSampler(model, tokenizer)
    settings = config.grpo
    rollout = sampler.sample([r.prompt for r in records], RolloutConfig(
        num_samples=1, temperature=0.0, stop=settings.stop,
        max_new_tokens=settings.eval_max_new_tokens or settings.max_new_tokens))
    _, per_reward, _ = combine_rewards(specs, [r.prompt for r in records], rollout.texts,
                                       reward_columns(records), on_error="score_failed")
    metrics = {}
    for name, values in per_reward.items():
        scored = [v for v in values if v is not None]
        metrics[name] = sum(scored) / max(len(scored), 1)
    metrics["completion_length"] = rollout.completion_mask.sum(1).float().mean().item()
    return metrics


def gold_monitor(config: GRPOConfig, held_out, specs, gold_specs, start_step: int) -> RewardHackingMonitor | None:
    """The reward-hacking watch when ``grpo.gold`` is set: gold and proxy rewards and KL on data.eval."""
    gold = config.grpo.gold
    if gold is None:
        return None
    monitor = RewardHackingMonitor(
        config.run_dir(), [t.prompt for t in held_out], reward_columns(held_out), specs, gold_specs,
        max_new_tokens=config.grpo.eval_max_new_tokens or config.grpo.max_new_tokens, stop=config.grpo.stop,
        window=gold.window, min_change=gold.min_change, seed=config.train.seed, title=f"GRPO {config.train.run_name}")
    monitor.restore(start_step)
    return monitor


def pool_scores(totals: list[float], per_reward: dict, metrics: dict[str, float], lengths: torch.Tensor,
                truncated: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float], int]:
    """Every rank's rewards, completion lengths and reward metrics, in global row order.

    Under torchrun each rank samples and scores its own block of prompts (whole groups); group
    and batch statistics (advantages, reward mean/std) need them all. One process: as given.
    Shape: totals (rows,), lengths (rows,) -> rewards (P*N,), lengths (P*N,).
    """
    if not distributed.world().enabled:
        return torch.tensor(totals), lengths, metrics, truncated
    ranks = distributed.gather_objects((totals, per_reward, metrics, lengths.tolist(), truncated))
    pooled: dict[str, float] = {}
    for name in per_reward:
        applied = [v for _, per, _, _, _ in ranks for v in per[name] if v is not None]
        pooled[f"rewards/{name}/mean"], pooled[f"rewards/{name}/std"] = mean_std(applied)
        if f"rewards/{name}/failed" in metrics:
            pooled[f"rewards/{name}/failed"] = sum(m[f"rewards/{name}/failed"] for _, _, m, _, _ in ranks)
    all_totals = [t for rank_totals, *_ in ranks for t in rank_totals]
    pooled["rewards/total/mean"], pooled["rewards/total/std"] = mean_std(all_totals)
    all_lengths = torch.tensor([n for *_, rank_lengths, _ in ranks for n in rank_lengths])
    return torch.tensor(all_totals), all_lengths, pooled, sum(r[-1] for r in ranks)


def pooled_masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """``masked_mean(x, mask)`` over every rank's tokens. Shape: x, mask (rows, L)."""
    if not distributed.world().enabled:
        return masked_mean(x, mask).item()
    total = distributed.all_reduce_sum(float(torch.where(mask, x, 0.0).sum()))
    return total / max(distributed.all_reduce_sum(int(mask.sum())), 1)


def train_grpo(config: GRPOConfig) -> Path:
    settings = config.grpo
    # ---- checked before the model loads or the run folder exists ------------------------
    check_run(config)
    specs = reward_specs(settings.rewards)
    gold_specs = reward_specs(settings.gold.rewards) if settings.gold is not None else []
    tokenizer = load_tokenizer(config.model.path)

    def load(path, scored_by):  # TRL's prompt-only rows; `answer` and other columns go to the rewards
        tasks = load_records(path, "prompt", tokenizer=tokenizer, truncation=config.data.truncation,
                             max_prompt_tokens=config.data.max_prompt_tokens)
        check_reward_columns(scored_by, list(reward_columns(tasks)), path)
        return tasks

    tasks = load(config.data.train, specs)
    held_out = load(config.data.eval, specs + gold_specs) if config.data.eval else []
    if settings.gold is not None and not held_out:
        raise ConfigError("grpo.gold needs held-out prompts to score: set data.eval")

    run_dir = start_run(config)
    model, tokenizer = load_policy(config.model, run_dir)
    console.print(f"{len(tasks)} training tasks" + (f", {len(held_out)} held out" if held_out else ""))

    # beta = 0 needs no reference at all; with LoRA the base (adapters off) is the reference.
    reference = None
    if settings.beta > 0 and not adapters_off_is_reference(config.model):
        from tether.models import load_model

        reference, _ = load_model(config.model.path)
        reference.requires_grad_(False)

    plan = BatchPlan(shuffled_groups(len(tasks), settings.prompts_per_step), seed=config.train.seed, grad_accum=1,
                     max_steps=config.train.max_steps, epochs=config.train.epochs)
    session = TrainingSession(model, config, plan.total_steps,
                              optimizer_steps=plan.total_steps * settings.updates_per_rollout)
    world, device = session.world, session.world.device
    if reference is not None:
        reference.to(device)  # a full frozen copy on every rank, also under FSDP (see docs/scaling.md)
    sampler = make_sampler(model, tokenizer, config.rollout, bf16=config.train.bf16)
    monitor = gold_monitor(config, held_out, specs, gold_specs, session.start_step)
    # The KL on held-out prompts needs a reference: the LoRA-off base, or the loaded model.
    reference_fn = ((lambda rollout: reference_logps(model, reference, rollout))
                    if reference is not None or adapters_off_is_reference(config.model) else None)

    def evaluate(step: int) -> dict[str, float]:
        model.eval()
        with torch.no_grad(), session.autocast():
            metrics = evaluate_tasks(model, tokenizer, held_out, specs, config)
            metrics = {f"eval/{key}": value for key, value in metrics.items()}
            if monitor is not None:
                metrics.update(monitor.evaluate(model, tokenizer, step, reference_fn))
        model.train()
        return metrics

    if held_out and session.start_step == 0:  # held-out generation on rank 0 (with whole weights)
        session.log(0, distributed.on_main(model, lambda: evaluate(0)) or {})

    model.train()
    with progress_bar(f"grpo {config.train.run_name}", plan.total_steps, completed=session.start_step,
                      enabled=config.train.progress) as bar:
        for step in range(session.start_step, plan.total_steps):
            # Under torchrun each rank takes a contiguous block of the step's prompts.
            step_prompts, block = distributed.local_block(plan.micro_batches(step)[0])
            batch_tasks = [tasks[i] for i in step_prompts]
            n = settings.num_generations

            # ---- rollout: N completions per prompt, the prompt's KV cache shared -----------
            model.eval()
            with torch.no_grad(), session.autocast(), distributed.gathered_params(model):
                rollout = sampler.sample([t.prompt for t in batch_tasks], RolloutConfig(
                    num_samples=n, temperature=settings.temperature, top_p=settings.top_p,
                    max_new_tokens=settings.max_new_tokens, stop=settings.stop,
                    # per-step seed: exact resume; and one stream per rank (rank 0 of 1: the plain seed)
                    seed=(config.train.seed * 1_000_003 + step) * world.size + world.rank))
            model.train()

            # ---- rewards and advantages (on every rank's groups) ----------------------------
            prompts = [t.prompt for t in batch_tasks for _ in range(n)]
            totals, per_reward, metrics = combine_rewards(specs, prompts, rollout.texts,
                                                          reward_columns(batch_tasks, n),
                                                          on_error=settings.on_reward_error)
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
            here = slice(block.start * n, block.stop * n)  # this rank's rows of the step
            advantages = advantages[here].to(device)
            rows = keep[here].nonzero().squeeze(1)

            # ---- clipped policy updates on this batch ---------------------------------------
            mask = rollout.completion_mask.bool()  # (P*N, L)
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
                    ref_parts = [reference_logps(model, reference, rollout, part) for part in parts]
            # The old log-probs are the trainer's own, from the first update's forward (no optimizer step
            # has run yet, so they are the sampling weights): the sampler's incremental decoding rounds
            # differently under bf16, and a ratio of 1 on policy must not depend on that.
            old_parts: list[torch.Tensor] = []
            # Ranks keep different numbers of rows (dynamic sampling); every rank still joins each
            # gradient collective, with zero-weight passes where it has run out of rows.
            passes = distributed.lockstep_passes(len(parts), session.model)
            update_metrics: dict[str, float] = {}
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
                        # vLLM's log-probs differ from the trainer's: weigh tokens by their ratio (TIS)
                        weights = truncated_importance_weights(old, rollout.model_logps[part],
                                                               config.rollout.importance_cap)
                        ref = None if ref_parts is None else ref_parts[index] if real else old
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
                        update_metrics["loss"] = update_metrics.get("loss", 0.0) + loss.item() * share / settings.updates_per_rollout
                        for key, value in loss_metrics.items():
                            update_metrics[key] = update_metrics.get(key, 0.0) + float(value) * weight
                optimizer_metrics = session.optimizer_step(step, total_rows)
            update_metrics = {**distributed.sum_metrics(update_metrics), **optimizer_metrics}

            # ---- diagnostics -----------------------------------------------------------------
            done = step + 1
            metrics.update(update_metrics)
            metrics.update({
                "reward/mean": rewards.mean().item(), "reward/std": rewards.std().item(),
                "frac_zero_variance_groups": flat_groups.float().mean().item(),
                "completion_length": lengths.float().mean().item(),
                "frac_truncated": truncated / len(rewards),
                "rows_trained": float(total_rows),
                "sampling_kl": pooled_masked_mean(rollout.model_logps - rollout.sampling_logps, mask)
                if settings.temperature != 1.0 or settings.top_p < 1.0 else 0.0,
            })
            if old_parts:  # how far the sampler's log-probs are from the trainer's (bf16: rounding)
                trained = torch.cat(parts)
                gap = (torch.cat(old_parts) - rollout.model_logps[trained]).abs()
                metrics["logps/sampler_gap"] = pooled_masked_mean(gap, mask[trained])
            wants_eval = held_out and (done == plan.total_steps or
                                       bool(config.train.eval_every and done % config.train.eval_every == 0))
            if wants_eval:
                metrics.update(distributed.on_main(model, lambda: evaluate(done)) or {})
            if wants_eval or session.should_log(done):
                session.log(done, metrics)
            bar.advance(1, status=f"reward {metrics['reward/mean']:.3f}")
            session.end_step(done)
    session.close()

    if world.is_main:
        plot_metrics(run_dir, ["reward/mean", "eval/math_answer", "eval/think_answer_format"],
                     run_dir / "curves.png", title=f"GRPO {config.train.run_name}")
    final_dir = run_dir / "final"
    distributed.save_final_model(model, tokenizer, final_dir, config=config, algorithm="grpo")
    console.print(f"GRPO done; model saved to {final_dir}; curves in {run_dir / 'curves.png'}")
    return final_dir
