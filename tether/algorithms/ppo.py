"""PPO-RLHF (Ziegler et al. 2019; Ouyang et al. 2022): a policy with a value head, a scalar reward
(a reward model, or any reward function) at the end of each completion, a KL penalty per token.

    tether train ppo --config recipes/rlhf-ppo.yaml      (the PPO stage of the RLHF pipeline)

One step: sample completions for ``prompts_per_step`` prompts; score them; one no-grad forward gives
the sampling policy's log-probs and the critic's values; per-token rewards r_t = -kl_coef KL_t (+ the
score at the last token); GAE advantages and returns; whitening; then ``ppo_epochs`` passes of shuffled
minibatches with the clipped policy and value losses, stopping early once the approximate KL from the
sampling policy passes ``target_kl``. Formulas: tether/losses/ppo.py. The critic is a head on the
policy's own backbone: tether/models/value_head.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from tether.algorithms.common import load_policy
from tether.algorithms.grpo import reward_columns
from tether.audit.reward_hacking import RewardHackingMonitor
from tether.config import GoldSettings, RewardSettings, RunConfig, Section
from tether.data import encode_prompt, read_rows, truncate_prompt_left, validate_row
from tether.data.records import VerifiableRecord
from tether.engine import BatchPlan, TrainingSession, console, progress_bar, start_run
from tether.engine.batches import shuffled_groups
from tether.engine.plots import plot_metrics
from tether.errors import ConfigError, DataValidationError
from tether.losses.kl import masked_mean
from tether.losses.logprobs import token_logps
from tether.losses.ppo import (AdaptiveKLController, FixedKLController, approx_kl, explained_variance, gae,
                               policy_loss, token_rewards, value_loss, whiten)
from tether.models import load_model, reference_mode, save_model
from tether.models.value_head import PolicyWithValueHead, save_value_head
from tether.rewards.base import combine_rewards
from tether.rewards.resolve import reward_specs
from tether.rollout.sampler import RolloutBatch, RolloutConfig, TransformersSampler


class PPOSettings(Section):
    # ---- rollout
    prompts_per_step: int = Field(8, gt=0)
    num_generations: int = Field(1, gt=0)  # completions per prompt
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = []
    # ---- the score: weighted reward functions, e.g. {name: "reward_model:runs/rm/final"}
    rewards: list[RewardSettings] = []  # `tether train rlhf` fills in the reward model it trained
    on_reward_error: Literal["raise", "score_failed"] = "raise"
    missing_eos_penalty: float | None = Field(None, ge=0)  # subtracted from truncated completions' score
    # ---- PPO (defaults: TRL's PPOConfig)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    epsilon: float = Field(0.2, gt=0, lt=1)  # policy ratio clip (TRL's cliprange)
    cliprange_value: float | None = Field(0.2, gt=0)  # None: unclipped value loss
    vf_coef: float = Field(0.1, ge=0)
    kl_coef: float = Field(0.05, ge=0)  # 0: no KL penalty, and no reference model is loaded
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = False  # Ziegler et al.'s controller steers the KL toward kl_target
    kl_target: float = Field(6.0, gt=0)  # nats per completion
    kl_horizon: int = Field(10000, gt=0)  # completions
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    ppo_epochs: int = Field(4, gt=0)
    minibatch_size: int | None = Field(None, gt=0)  # completions per update; None: the whole batch
    target_kl: float | None = Field(None, gt=0)  # stop this rollout's updates once approx_kl passes it
    # ---- held-out evaluation (data.eval): proxy reward, KL, and the gold reward when set
    gold: GoldSettings | None = None
    eval_max_new_tokens: int | None = Field(None, gt=0)
    eval_prompts: int | None = Field(None, gt=0)  # the first N prompts of data.eval; None: all


class PPOConfig(RunConfig):
    ppo: PPOSettings = PPOSettings()

    @model_validator(mode="after")
    def _has_a_reward(self) -> "PPOConfig":
        if not self.ppo.rewards:
            raise ValueError("ppo.rewards is empty: name at least one reward, e.g. "
                             "[{name: 'reward_model:runs/reward-model/final'}]")
        return self


# ------------------------------------------------------------------------------------------- prompts

def load_prompts(path: str, tokenizer, *, max_prompt_tokens: int | None = None,
                 truncation: str = "error") -> list[VerifiableRecord]:
    """Prompt rows (``prompt`` plus any columns, passed on to rewards), validated with file:line errors.

    ``answer`` is optional here (the verifiable format without it): rows without one get ``answer=""``.
    """
    records, problems = [], []
    for location, row, problem in read_rows(path):
        if problem is not None:
            problems.append(problem)
            continue
        needs_answer = isinstance(row, dict) and row.get("answer") is None
        record, row_problems = validate_row({**row, "answer": "-"} if needs_answer else row, "verifiable", location)
        problems.extend(row_problems)
        if record is None:
            continue
        if needs_answer:
            record = VerifiableRecord(prompt=record.prompt, answer="", extras=record.extras, id=record.id,
                                      location=location)
        if max_prompt_tokens is not None and len(encode_prompt(record.prompt, tokenizer)) > max_prompt_tokens:
            if truncation == "drop":
                continue
            shorter = truncate_prompt_left(record.prompt, tokenizer, max_prompt_tokens)
            if truncation == "error" or shorter is None:
                problems.append(DataValidationError(f"prompt is over max_prompt_tokens={max_prompt_tokens}",
                                                    file=location.file, line=location.line, field="prompt"))
                continue
            record = VerifiableRecord(prompt=shorter, answer=record.answer, extras=record.extras, id=record.id,
                                      location=location)
        records.append(record)
    if problems:
        raise DataValidationError(problems[0].problem, problems=problems)
    if not records:
        raise DataValidationError("no prompts: the file is empty", file=str(path))
    return records


# ---------------------------------------------------------------------------------------- the session

class PPOSession(TrainingSession):
    """The engine's session; its checkpoints also carry the KL coefficient, which the adaptive
    controller changes every step, so a resumed run continues with the same value."""

    kl_coef: float = 0.0

    def checkpoint_extras(self) -> dict:
        return {"kl_coef": self.kl_coef}


def forward_chunks(actor_critic: PolicyWithValueHead, rollout: RolloutBatch, chunk: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and values of every completion token, ``chunk`` rows per forward. Shape: (B, L) each."""
    input_ids, attention_mask, position_ids = rollout.sequences()
    start = rollout.prompt_ids.shape[1]
    parts = [actor_critic(input_ids[i:i + chunk], attention_mask[i:i + chunk], position_ids[i:i + chunk],
                          start=start) for i in range(0, len(rollout), chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def train_ppo(config: PPOConfig) -> Path:
    settings = config.ppo
    run_dir = start_run(config)
    policy, tokenizer = load_policy(config.model)
    actor_critic = PolicyWithValueHead(policy)
    specs = reward_specs(settings.rewards)

    def load(path):
        return load_prompts(path, tokenizer, max_prompt_tokens=config.data.max_prompt_tokens,
                            truncation=config.data.truncation)

    prompts = load(config.data.train)
    held_out = load(config.data.eval)[:settings.eval_prompts] if config.data.eval else []
    console.print(f"{len(prompts)} training prompts" + (f", {len(held_out)} held out" if held_out else ""))
    if len(prompts) < settings.prompts_per_step:
        raise ConfigError(f"{config.data.train} has {len(prompts)} prompts, fewer than ppo.prompts_per_step="
                          f"{settings.prompts_per_step}")
    if settings.gold is not None and not held_out:
        raise ConfigError("ppo.gold is scored on held-out prompts: set data.eval")

    # kl_coef = 0 needs no reference; with LoRA the base (adapters off) is the reference, for free.
    reference = None
    if settings.kl_coef > 0 and config.model.lora is None:
        reference, _ = load_model(config.model.path)
        reference.requires_grad_(False)
    has_reference = reference is not None or config.model.lora is not None

    def reference_logps(rollout: RolloutBatch) -> torch.Tensor:
        input_ids, attention_mask, position_ids = rollout.sequences()
        start = rollout.prompt_ids.shape[1]
        with torch.no_grad():
            if reference is not None:
                return token_logps(reference, input_ids, attention_mask, start=start, position_ids=position_ids)
            with reference_mode(policy):
                return token_logps(policy, input_ids, attention_mask, start=start, position_ids=position_ids)

    plan = BatchPlan(shuffled_groups(len(prompts), settings.prompts_per_step), seed=config.train.seed, grad_accum=1,
                     max_steps=config.train.max_steps, epochs=config.train.epochs)
    rows = settings.prompts_per_step * settings.num_generations
    minibatch = min(settings.minibatch_size or rows, rows)
    updates_per_step = settings.ppo_epochs * math.ceil(rows / minibatch)
    session = PPOSession(actor_critic, config, plan.total_steps, optimizer_steps=plan.total_steps * updates_per_step)
    controller = (AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
                  if settings.adaptive_kl else FixedKLController(settings.kl_coef))
    saved = session.resumed_state().get("kl_coef")
    if saved is not None:
        controller.value = saved
    session.kl_coef = controller.value
    sampler = TransformersSampler(policy, tokenizer)

    monitor = None
    if held_out:
        gold = settings.gold
        monitor = RewardHackingMonitor(
            run_dir, [r.prompt for r in held_out], reward_columns(held_out), specs,
            reward_specs(gold.rewards) if gold else (),
            max_new_tokens=settings.eval_max_new_tokens or settings.max_new_tokens,
            stop=settings.stop, window=gold.window if gold else 3, min_change=gold.min_change if gold else 0.0,
            seed=config.train.seed, title=f"PPO {config.train.run_name}")
        monitor.restore(session.start_step)

    def evaluate(step: int) -> dict[str, float]:
        with torch.no_grad(), session.autocast():
            return monitor.evaluate(policy, tokenizer, step, reference_logps if has_reference else None)

    if monitor is not None and session.start_step == 0:
        session.log(0, evaluate(0))

    actor_critic.train()
    with progress_bar(f"ppo {config.train.run_name}", plan.total_steps, completed=session.start_step,
                      enabled=config.train.progress) as bar:
        for step in range(session.start_step, plan.total_steps):
            batch = [prompts[i] for i in plan.micro_batches(step)[0]]
            n = settings.num_generations

            # ---- rollout -------------------------------------------------------------------
            with torch.no_grad(), session.autocast():
                rollout = sampler.sample([r.prompt for r in batch], RolloutConfig(
                    num_samples=n, temperature=settings.temperature, top_p=settings.top_p,
                    max_new_tokens=settings.max_new_tokens, stop=settings.stop,
                    seed=config.train.seed * 1_000_003 + step))  # per-step seed: exact resume
            actor_critic.train()

            # ---- score, old log-probs and values, per-token rewards, GAE -----------------------
            totals, _, metrics = combine_rewards(specs, [r.prompt for r in batch for _ in range(n)], rollout.texts,
                                                 reward_columns(batch, n), on_error=settings.on_reward_error)
            scores = torch.tensor(totals)  # (B,)
            truncated = torch.tensor([reason == "length" for reason in rollout.finish_reasons])  # (B,)
            if settings.missing_eos_penalty is not None:
                scores = scores - settings.missing_eos_penalty * truncated.float()
            mask = rollout.completion_mask.bool()  # (B, L)
            with torch.no_grad(), session.autocast():
                old_logps, old_values = forward_chunks(actor_critic, rollout, minibatch)  # (B, L) each
                # With LoRA the reference is free, so the KL is measured even when kl_coef = 0.
                ref_logps = reference_logps(rollout).float() if has_reference else None
            kl_coef = controller.value
            rewards, kl = token_rewards(scores, old_logps, ref_logps, mask, kl_coef=kl_coef,
                                        kl_estimator=settings.kl_estimator)  # (B, L)
            if settings.whiten_rewards:
                rewards = whiten(rewards, mask, shift_mean=False)
            advantages, returns = gae(rewards, old_values, mask, gamma=settings.gamma, lam=settings.lam)
            if settings.whiten_advantages:
                advantages = whiten(advantages, mask)

            # ---- minibatch epochs of clipped policy + value updates ----------------------------
            input_ids, attention_mask, position_ids = rollout.sequences()
            start = rollout.prompt_ids.shape[1]
            shuffler = torch.Generator().manual_seed(config.train.seed * 7_919 + step)
            sums = {"loss/policy": 0.0, "loss/value": 0.0, "clipfrac": 0.0, "vf_clipfrac": 0.0,
                    "approx_kl": 0.0, "ratio": 0.0}
            updates, stopped = 0, False
            for _ in range(settings.ppo_epochs):
                order = torch.randperm(len(rollout), generator=shuffler)
                for first in range(0, len(order), minibatch):
                    part = order[first:first + minibatch]
                    with session.autocast():
                        logps, values = actor_critic(input_ids[part], attention_mask[part], position_ids[part],
                                                     start=start)  # (b, L) each
                        pg_loss, pg_metrics = policy_loss(logps, old_logps[part], advantages[part], mask[part],
                                                          epsilon=settings.epsilon)
                        vf_loss, vf_metrics = value_loss(values, old_values[part], returns[part], mask[part],
                                                         cliprange_value=settings.cliprange_value)
                        loss = pg_loss + settings.vf_coef * vf_loss
                    session.backward(loss, step)
                    grad = session.optimizer_step(step, len(part))
                    kl_now = approx_kl(logps, old_logps[part], mask[part]).item()
                    for key, value in (("loss/policy", pg_loss), ("loss/value", vf_loss), ("approx_kl", kl_now),
                                       ("clipfrac", pg_metrics["clipfrac"]), ("ratio", pg_metrics["ratio"]),
                                       ("vf_clipfrac", vf_metrics["vf_clipfrac"])):
                        sums[key] += float(value.detach() if torch.is_tensor(value) else value)
                    updates += 1
                    if settings.target_kl is not None and kl_now > settings.target_kl:
                        stopped = True  # the policy moved far enough from the one that sampled
                        break
                if stopped:
                    break

            # ---- KL controller and diagnostics --------------------------------------------------
            sequence_kl = kl.sum(1)  # (B,)
            controller.update(sequence_kl.mean().item(), len(rollout))
            session.kl_coef = controller.value
            done = step + 1
            metrics.update({key: value / updates for key, value in sums.items()})
            metrics.update({
                "reward/mean": scores.mean().item(), "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
                "kl": sequence_kl.mean().item() if ref_logps is not None else math.nan,
                "kl_coef": kl_coef, "next_kl_coef": controller.value,
                "non_score_reward": (-kl_coef * sequence_kl).mean().item(),
                "rlhf_reward": (scores - kl_coef * sequence_kl).mean().item(),
                # -log pi of sampled tokens: a one-sample estimate of the policy's per-token entropy
                "entropy": masked_mean(-old_logps, mask).item(),
                "value/mean": masked_mean(old_values, mask).item(),
                "explained_variance": explained_variance(old_values, returns, mask),
                "completion_length": mask.sum(1).float().mean().item(),
                "frac_truncated": truncated.float().mean().item(),
                "updates": float(updates), "early_stopped": float(stopped), **grad,
            })
            wants_eval = monitor is not None and (
                done == plan.total_steps or bool(config.train.eval_every and done % config.train.eval_every == 0))
            if wants_eval:
                metrics.update(evaluate(done))
                actor_critic.train()
            if wants_eval or session.should_log(done):
                session.log(done, metrics)
            bar.advance(1, status=f"reward {metrics['reward/mean']:.3f} kl {metrics['kl']:.3f}")
            session.end_step(done)
    session.close()

    plot_metrics(run_dir, ["reward/mean", "kl", "kl_coef", "loss/value", "clipfrac", "eval/proxy_reward",
                           "eval/gold_reward"], run_dir / "curves.png", title=f"PPO {config.train.run_name}")
    final_dir = run_dir / "final"
    save_model(policy, tokenizer, final_dir)
    save_value_head(actor_critic.value_head, final_dir)
    console.print(f"PPO done; model saved to {final_dir}; curves in {run_dir / 'curves.png'}")
    return final_dir
