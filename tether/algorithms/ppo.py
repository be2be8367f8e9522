"""PPO-RLHF (Ziegler et al. 2019; Ouyang et al. 2022): a policy with a value head, a scalar reward
(a reward model, or any reward function) at the end of each completion, a KL penalty per token.

    tether train ppo --config recipes/rlhf-ppo.yaml      (the PPO stage of the RLHF pipeline)

One step: sample completions for ``prompts_per_step`` prompts; score them; one no-grad forward gives
the sampling policy's log-probs and the critic's values; per-token rewards r_t = -kl_coef KL_t (+ the
score at the last token); GAE advantages and returns; whitening; then ``ppo_epochs`` passes of shuffled
minibatches with the clipped policy and value losses, stopping early once the approximate KL from the
sampling policy passes ``target_kl``. Formulas: tether/losses/ppo.py. The critic is a head on the
policy's own backbone: tether/models/value_head.py. It starts at V = 0; with ``value_warmup_steps`` a
fresh run first fits it alone to the first rollout's returns (``warm_up_critic``), so the first
advantages already have a baseline.

Under torchrun (DDP or FSDP2, docs/scaling.md) each rank samples and scores a contiguous block of the
step's prompts, as in GRPO. Everything PPO computes over the batch is computed over the whole step:
whitening's mean and variance, the KL the adaptive controller reads, each minibatch's token-mean
losses and its approximate KL (so every rank takes the same early-stop decision), and the logged
statistics. The value head sits inside the wrapped actor-critic, so its gradients are reduced with
the policy's. With the same samples per prompt, 2 processes train as 1 does.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from tether.algorithms.common import load_policy
from tether.algorithms.rl_pooled import (
    pool_scores,
    pooled_explained_variance,
    pooled_masked_mean,
    pooled_rows,
    pooled_whiten,
)
from tether.algorithms.rl_step import (
    Reference,
    count_throughput,
    held_out_monitor,
    load_rl_data,
    sample_and_score,
    step_prompts,
)
from tether.config import GoldSettings, RewardSettings, RunConfig, Section
from tether.engine import BatchPlan, TrainingSession, console, distributed, progress_bar, start_run
from tether.engine.batches import shuffled_groups
from tether.engine.checkpoint import copy_weights
from tether.engine.optim import build_optimizer
from tether.engine.plots import plot_metrics
from tether.envs.rollout import (
    EnvironmentSettings,
    TrajectoryLog,
    episode_gae,
    trained_token_mask,
)
from tether.errors import ConfigError
from tether.losses.importance import truncated_importance_weights
from tether.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    approx_kl,
    gae,
    policy_loss,
    token_rewards,
    value_loss,
)
from tether.models.value_head import PolicyWithValueHead, ValueHead, save_value_head
from tether.rollout.backends import RolloutSettings, make_sampler
from tether.rollout.sampler import RolloutBatch


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
    value_warmup_steps: int = Field(0, ge=0)  # fresh run: steps fitting the critic alone before the first update
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
    # agents: multi-turn episodes with tools; the episode's return is the score (docs/agents.md)
    environment: EnvironmentSettings | None = None
    eval_max_new_tokens: int | None = Field(None, gt=0)
    eval_prompts: int | None = Field(None, gt=0)  # N prompts of data.eval drawn with train.seed; None: all
    eval_samples: int = Field(1, gt=0)  # samples per held-out prompt at each evaluation (more: less noise)


class PPOConfig(RunConfig):
    ppo: PPOSettings = PPOSettings()
    rollout: RolloutSettings = RolloutSettings()  # the sampling engine (transformers or vllm)

    @model_validator(mode="after")
    def _has_a_reward(self) -> PPOConfig:
        if not self.ppo.rewards and self.ppo.environment is None:
            raise ValueError("ppo.rewards is empty: name at least one reward, e.g. "
                             "[{name: 'reward_model:runs/reward-model/final'}]")
        return self


# ---------------------------------------------------------------------------------------- the session

class PPOSession(TrainingSession):
    """The engine's session; its checkpoints also carry the KL coefficient, which the adaptive
    controller changes every step, so a resumed run continues with the same value."""

    kl_coef: float = 0.0

    def checkpoint_extras(self) -> dict:
        return {"kl_coef": self.kl_coef}


# ------------------------------------------------------------------------------- the step

def forward_chunks(actor_critic: PolicyWithValueHead, rollout: RolloutBatch, chunk: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and values of every completion token, ``chunk`` rows per forward. Shape: (B, L) each."""
    input_ids, attention_mask, position_ids = rollout.sequences()
    start = rollout.prompt_ids.shape[1]
    parts = [actor_critic(input_ids[i:i + chunk], attention_mask[i:i + chunk], position_ids[i:i + chunk],
                          start=start) for i in range(0, len(rollout), chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def warm_up_critic(session: TrainingSession, rollout: RolloutBatch, returns: torch.Tensor, mask: torch.Tensor, *,
                   steps: int, chunk: int) -> torch.Tensor:
    """Fit the value head alone to one rollout's returns; returns its new values of that rollout.

    The head starts at V = 0, so without this the first advantages are the returns minus nothing. A
    copy of the head takes ``steps`` full-batch AdamW steps (the run's optim settings, a fresh
    optimizer) on the unclipped value loss over the step's tokens, every rank's:

        L = 1/2 mean_t (V_t - R_t)^2,   V_t = w . h_{t-1} + b

    then replaces the head. The backbone's states h_{t-1} are computed once, without gradients (the
    head is linear on them), so the policy's weights and the session's optimizer and schedule are
    untouched. Unclipped: the value clip would hold V within cliprange_value of its zero start.

    Shape: returns, mask (b, L) -> values (b, L)
    """
    actor_critic = session.module
    input_ids, attention_mask, position_ids = rollout.sequences()
    start = rollout.prompt_ids.shape[1]
    with torch.no_grad(), session.autocast(), distributed.gathered_params(actor_critic):
        hidden = torch.cat([actor_critic.features(input_ids[i:i + chunk], attention_mask[i:i + chunk],
                                                  position_ids[i:i + chunk], start=start)
                            for i in range(0, len(rollout), chunk)]).float()  # (b, L, H)
    head = ValueHead(hidden.shape[-1]).to(hidden.device)
    head.load_state_dict({name: distributed.full_tensor(value)
                          for name, value in actor_critic.value_head.state_dict().items()})
    optimizer = build_optimizer(head, session.config.optim)
    tokens = int(mask.sum())
    share = tokens / max(distributed.all_reduce_sum(tokens), 1)  # token means over the whole step
    for _ in range(steps):
        values = head(hidden)  # (b, L)
        loss, _ = value_loss(values, values.detach(), returns, mask, cliprange_value=None)
        (loss * share).backward()
        distributed.all_reduce_sum_tensors([p.grad for p in head.parameters()])  # every rank's tokens
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    copy_weights(actor_critic.value_head, head.state_dict())
    with torch.no_grad():
        return head(hidden)


def kl_controller(settings: PPOSettings, session: PPOSession) -> AdaptiveKLController | FixedKLController:
    """The KL coefficient's controller, resumed at the value the checkpoint saved."""
    controller = (AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
                  if settings.adaptive_kl else FixedKLController(settings.kl_coef))
    saved = session.resumed_state().get("kl_coef")
    if saved is not None:
        controller.value = saved
    session.kl_coef = controller.value
    return controller


def advantage_estimator(settings: PPOSettings):
    """GAE; in multi-turn episodes it runs over the model's tokens, bridging the tool outputs
    between its turns (agents)."""
    return episode_gae if settings.environment is not None else gae


def warm_up_first_critic(session: TrainingSession, rollout: RolloutBatch, rewards: torch.Tensor,
                         values: torch.Tensor, mask: torch.Tensor, settings: PPOSettings, chunk: int
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """A fresh run's critic warm-up: the zero head would make the first advantages the bare returns.
    Its target is the Monte-Carlo return (lam = 1), which needs no critic. Returns the warmed
    critic's values (the updates' start and the GAE baseline) and how well each head explains the
    returns. Shape: rewards, values, mask (b, L)."""
    _, mc_returns = advantage_estimator(settings)(rewards, torch.zeros_like(values), mask, gamma=settings.gamma,
                                                  lam=1.0)
    warmed = warm_up_critic(session, rollout, mc_returns, mask, steps=settings.value_warmup_steps, chunk=chunk)
    metrics = {"value_warmup/explained_variance_before": pooled_explained_variance(values, mc_returns, mask),
               "value_warmup/explained_variance_after": pooled_explained_variance(warmed, mc_returns, mask)}
    console.print(f"value warm-up: {settings.value_warmup_steps} steps on the critic alone, explained variance "
                  f"{metrics['value_warmup/explained_variance_before']:.3f} -> "
                  f"{metrics['value_warmup/explained_variance_after']:.3f}")
    return warmed, metrics


def ppo_updates(session: TrainingSession, rollout: RolloutBatch, old_logps: torch.Tensor, old_values: torch.Tensor,
                advantages: torch.Tensor, returns: torch.Tensor, here: slice, settings: PPOSettings, step: int,
                rows: int, minibatch: int) -> dict[str, float]:
    """``ppo_epochs`` passes of shuffled minibatches with the clipped policy and value losses,
    stopping once the approximate KL passes ``target_kl``; returns the update metrics.

    The shuffle runs over the step's global rows (``rows``), so a minibatch is the one-process
    minibatch; each rank trains its own rows of it (``here``), weighted by its share of the
    minibatch's tokens (the losses are token means), and the gradients add up to the one-process
    gradient. A rank with no row in a minibatch makes a zero-weight pass, so it still joins the
    gradient collective. Shape: old_logps, old_values, advantages, returns (b, L)."""
    mask = trained_token_mask(rollout)  # agents: tool outputs are not trained
    input_ids, attention_mask, position_ids = rollout.sequences()
    start = rollout.prompt_ids.shape[1]
    shuffler = torch.Generator().manual_seed(session.config.train.seed * 7_919 + step)
    importance_cap = session.config.rollout.importance_cap
    sums = {"loss/policy": 0.0, "loss/value": 0.0, "clipfrac": 0.0, "vf_clipfrac": 0.0, "ratio": 0.0}
    if importance_cap is not None:
        sums["importance_weight/mean"] = 0.0
    kl_sum, updates, stopped, grad = 0.0, 0, False, {}
    for _ in range(settings.ppo_epochs):
        order = torch.randperm(rows, generator=shuffler)
        for first in range(0, rows, minibatch):
            chosen = order[first:first + minibatch]
            mine = chosen[(chosen >= here.start) & (chosen < here.stop)] - here.start
            part = mine if len(mine) else torch.zeros(1, dtype=torch.long)
            tokens = int(mask[mine].sum())
            share = tokens / max(distributed.all_reduce_sum(tokens), 1)
            with session.autocast():
                logps, values = session.model(input_ids[part], attention_mask[part], position_ids[part],
                                              start=start)  # (b', L) each
                # vLLM's log-probs differ from the trainer's: weigh tokens by their ratio (TIS)
                weights = truncated_importance_weights(old_logps[part], rollout.model_logps[part], importance_cap)
                pg_loss, pg_metrics = policy_loss(logps, old_logps[part], advantages[part], mask[part],
                                                  epsilon=settings.epsilon, token_weights=weights)
                vf_loss, vf_metrics = value_loss(values, old_values[part], returns[part], mask[part],
                                                 cliprange_value=settings.cliprange_value)
                loss = pg_loss + settings.vf_coef * vf_loss
            session.backward(loss, step, share)
            grad = session.optimizer_step(step, len(chosen))
            # The minibatch's approx KL: token means weighted by share, summed over ranks.
            kl_now = distributed.all_reduce_sum(approx_kl(logps, old_logps[part], mask[part]).item() * share)
            kl_sum += kl_now
            for key, value in (("loss/policy", pg_loss), ("loss/value", vf_loss),
                               ("clipfrac", pg_metrics["clipfrac"]), ("ratio", pg_metrics["ratio"]),
                               ("vf_clipfrac", vf_metrics["vf_clipfrac"])):
                sums[key] += float(value.detach()) * share
            if weights is not None:
                sums["importance_weight/mean"] += float(pg_metrics["importance_weight/mean"]) * share
            updates += 1
            # One decision for all ranks (all_true), or a rank that stops would leave the
            # others waiting in the next minibatch's collectives.
            if settings.target_kl is not None and not distributed.all_true(kl_now <= settings.target_kl):
                stopped = True  # the policy moved far enough from the one that sampled
                break
        if stopped:
            break
    metrics = {key: value / updates for key, value in distributed.sum_metrics(sums).items()}
    return {**metrics, "approx_kl": kl_sum / updates, "updates": float(updates), "early_stopped": float(stopped),
            **grad}


def save_policy_and_value_head(actor_critic: PolicyWithValueHead, tokenizer, directory: Path,
                               config: PPOConfig | None = None) -> Path:
    """The policy in the single-process format, and ``value_head.safetensors`` beside it (FSDP's
    shards gathered first, a collective: every rank calls this; rank 0 writes)."""
    final_dir = distributed.save_final_model(actor_critic.policy, tokenizer, directory,
                                            config=config, algorithm="ppo")
    head = actor_critic.value_head
    if distributed.is_sharded(actor_critic):
        whole = {name: distributed.full_tensor(value) for name, value in head.state_dict().items()}
        head = ValueHead(whole["summary.weight"].shape[1])
        head.load_state_dict(whole)
    if distributed.is_main():
        save_value_head(head, final_dir)
    distributed.barrier()
    return final_dir


# ------------------------------------------------------------------------------------------- the run

# ------------------------------------------------------------------------------------------- the run

def train_ppo(config: PPOConfig) -> Path:
    settings = config.ppo
    # checked before the model loads or the run folder exists
    data = load_rl_data(config, settings, "ppo", eval_prompts=settings.eval_prompts)
    if len(data.train) < settings.prompts_per_step:
        raise ConfigError(f"{config.data.train} has {len(data.train)} prompts, fewer than ppo.prompts_per_step="
                          f"{settings.prompts_per_step}")
    if settings.environment is not None and data.held_out:  # agents
        raise ConfigError("ppo.environment: held-out evaluation of episodes is not built for PPO yet; unset data.eval")
    run_dir = start_run(config)
    policy, tokenizer = load_policy(config.model, run_dir)
    actor_critic = PolicyWithValueHead(policy)
    console.print(f"{len(data.train)} training prompts" +
                  (f", {len(data.held_out)} held out" if data.held_out else ""))
    reference = Reference(policy, config.model, needed=settings.kl_coef > 0)
    plan = BatchPlan(shuffled_groups(len(data.train), settings.prompts_per_step), seed=config.train.seed,
                     grad_accum=1, max_steps=config.train.max_steps, epochs=config.train.epochs)
    rows = settings.prompts_per_step * settings.num_generations  # the step's completions, all ranks
    minibatch = min(settings.minibatch_size or rows, rows)
    updates_per_step = settings.ppo_epochs * math.ceil(rows / minibatch)
    session = PPOSession(actor_critic, config, plan.total_steps, optimizer_steps=plan.total_steps * updates_per_step)
    reference.to(session.world.device)
    controller = kl_controller(settings, session)
    sampler = make_sampler(policy, tokenizer, config.rollout, bf16=config.train.bf16)
    trajectory_log = (TrajectoryLog(run_dir, session.start_step if config.train.resume else None)
                      if settings.environment is not None and settings.environment.save_trajectories
                      and session.world.is_main else None)  # agents
    monitor = (held_out_monitor(config, settings, data, session.start_step, f"PPO {config.train.run_name}",
                                samples_per_prompt=settings.eval_samples) if data.held_out else None)

    def evaluate(step: int) -> dict[str, float]:
        """Held-out generation on rank 0 alone, with whole weights (``on_main``)."""
        def run() -> dict[str, float]:
            with torch.no_grad(), session.autocast():
                return monitor.evaluate(policy, tokenizer, step, reference.logps if reference.available else None)

        return distributed.on_main(session.module, run) or {}

    if monitor is not None and session.start_step == 0:
        session.log(0, evaluate(0))

    actor_critic.train()
    n = settings.num_generations
    with progress_bar(f"ppo {config.train.run_name}", plan.total_steps, completed=session.start_step,
                      enabled=config.train.progress) as bar:
        for step in range(session.start_step, plan.total_steps):
            indices, here = step_prompts(plan, step, n)  # this rank's prompts, and its rows of the step
            batch = [data.train[i] for i in indices]
            started = time.perf_counter()
            rollout, totals, per_reward, metrics = sample_and_score(sampler, tokenizer, session, batch, settings,
                                                                    step, data.specs)
            sampled = time.perf_counter()

            # ---- score, old log-probs and values, per-token rewards, GAE -----------------------
            scores = torch.tensor(totals)  # (b,) this rank's completions
            truncated = torch.tensor([reason == "length" for reason in rollout.finish_reasons])  # (b,)
            if settings.missing_eos_penalty is not None:
                scores = scores - settings.missing_eos_penalty * truncated.float()
            mask = trained_token_mask(rollout)  # (b, L); agents: tool outputs are not trained
            with torch.no_grad(), session.autocast(), distributed.gathered_params(session.module):
                old_logps, old_values = forward_chunks(session.module, rollout, minibatch)  # (b, L) each
                # With LoRA the reference is free, so the KL is measured even when kl_coef = 0.
                ref_logps = reference.logps(rollout).float() if reference.available else None
            kl_coef = controller.value
            rewards, kl = token_rewards(scores, old_logps, ref_logps, mask, kl_coef=kl_coef,
                                        kl_estimator=settings.kl_estimator)  # (b, L)
            if settings.whiten_rewards:
                rewards = pooled_whiten(rewards, mask, shift_mean=False)
            warmup = {}
            if step == 0 and settings.value_warmup_steps:  # step 0: a fresh run (resume starts later)
                old_values, warmup = warm_up_first_critic(session, rollout, rewards, old_values, mask, settings,
                                                          minibatch)
            advantages, returns = advantage_estimator(settings)(rewards, old_values, mask, gamma=settings.gamma,
                                                                lam=settings.lam)
            if settings.whiten_advantages:
                advantages = pooled_whiten(advantages, mask)
            update_metrics = ppo_updates(session, rollout, old_logps, old_values, advantages, returns, here,
                                         settings, step, rows, minibatch)
            count_throughput(session, rollout, n, settings.ppo_epochs, started, sampled)

            # ---- KL controller and diagnostics, over the whole step (every rank's rows) ---------------
            _, lengths, metrics, num_truncated = pool_scores(totals, per_reward, metrics, mask.sum(1).cpu(),
                                                             int(truncated.sum()))
            all_scores, sequence_kl = pooled_rows(scores, kl.sum(1))  # (P*N,) each
            controller.update(sequence_kl.mean().item(), len(sequence_kl))
            session.kl_coef = controller.value
            metrics.update({
                **update_metrics,
                "reward/mean": all_scores.mean().item(),
                "reward/std": all_scores.std().item() if len(all_scores) > 1 else 0.0,
                "kl": sequence_kl.mean().item() if ref_logps is not None else math.nan,
                "kl_coef": kl_coef, "next_kl_coef": controller.value,
                "non_score_reward": (-kl_coef * sequence_kl).mean().item(),
                "rlhf_reward": (all_scores - kl_coef * sequence_kl).mean().item(),
                # -log pi of sampled tokens: a one-sample estimate of the policy's per-token entropy
                "entropy": pooled_masked_mean(-old_logps, mask),
                # the sampler's log-probs against the trainer's recomputed old ones (PPO trains on the latter)
                "logps/sampler_gap": pooled_masked_mean((old_logps - rollout.model_logps).abs(), mask),
                "value/mean": pooled_masked_mean(old_values, mask),
                "explained_variance": pooled_explained_variance(old_values, returns, mask),
                "completion_length": lengths.float().mean().item(),
                "frac_truncated": num_truncated / len(all_scores), **warmup,
            })
            done = step + 1
            if trajectory_log is not None:  # agents
                trajectory_log.write(done, rollout.trajectories)
            wants_eval = monitor is not None and session.eval_due(done, config.train.eval_every)
            if wants_eval:
                metrics.update(evaluate(done))
            if wants_eval or warmup or session.should_log(done):
                session.log(done, metrics)
            bar.advance(1, status=f"reward {metrics['reward/mean']:.3f} kl {metrics['kl']:.3f}")
            session.end_step(done)
    session.close()
    sampler.close()  # vLLM: free the engine before the next stage starts one (rlhf rounds, cai)

    if session.world.is_main:
        plot_metrics(run_dir, ["reward/mean", "kl", "kl_coef", "loss/value", "clipfrac", "eval/proxy_reward",
                               "eval/gold_reward"], run_dir / "curves.png", title=f"PPO {config.train.run_name}")
    final_dir = save_policy_and_value_head(actor_critic, tokenizer, run_dir / "final", config)
    console.print(f"PPO done; model saved to {final_dir}; curves in {run_dir / 'curves.png'}")
    return final_dir
