"""Direct Preference Optimization (and IPO, hinge, robust/conservative variants).

    tether train dpo --config recipes/safety-dpo.yaml dpo.beta=0.1

The reference model's log-probabilities are computed once, before training, with the initial
weights; no second model sits in memory while the policy trains.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from tether.algorithms.common import epoch_schedule, load_policy
from tether.algorithms.preference_pairs import (
    PreferenceExamples,
    collate_pairs,
    evaluation_batches,
    pair_logps,
    score_pairs,
)
from tether.config import RunConfig, Section
from tether.data import encode_preference, load_records
from tether.engine import BatchPlan, check_run, console, distributed, fit, start_run
from tether.losses.dpo import chosen_nll, dpo_loss, dpo_metrics
from tether.models import load_tokenizer, reference_mode


class DPOSettings(Section):
    beta: float = Field(0.1, gt=0)  # strength of the pull toward the reference model
    loss_type: Literal["sigmoid", "robust", "ipo", "hinge"] = "sigmoid"  # as in TRL
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # assumed share of flipped labels (cDPO, robust)
    reference_free: bool = False  # compare the policy's log-probs alone, no reference model
    # Average log-probs over completion tokens instead of summing them (TRL's IPO does this).
    length_normalize: bool = False
    # RPO: add sft_weight * (NLL per chosen token), so chosen answers stay likely (0: plain DPO).
    sft_weight: float = Field(0.0, ge=0)


class DPOConfig(RunConfig):
    dpo: DPOSettings = DPOSettings()


def encode_pairs(path: str, tokenizer, config: DPOConfig) -> PreferenceExamples:
    records = load_records(path, "preference", tokenizer=tokenizer, truncation=config.data.truncation,
                           max_prompt_tokens=config.data.max_prompt_tokens)
    return PreferenceExamples([encode_preference(r, tokenizer, config.data.max_length) for r in records])


@torch.no_grad()
def compute_reference(model, examples: PreferenceExamples, pad_id: int, config: DPOConfig,
                      batches: list[list[int]], label: str = "reference log-probs") -> None:
    """log pi_ref(y | x) with the model as it is now (before training), scored in ``batches``.

    Pass the batches the run's policy forwards will see, in order (``first_batches``): each pair is
    then scored with the same rows, padding and shapes as its first policy forward, under the same
    autocast, so the two agree to the last bit and the first loss is exactly log 2 under bf16 too
    (bf16 matmuls of other shapes round differently: a SmolLM2 run scored in larger batches started
    at 0.6966). A pair met again in a later epoch, in another batch, keeps its first value.
    """
    if config.dpo.reference_free:
        examples.ref_chosen = examples.ref_rejected = torch.zeros(len(examples))
        return
    # A fresh LoRA (B = 0) computes exactly the base model: skip the adapter matmuls.
    with reference_mode(model) if _fresh_lora(model) else contextlib.nullcontext():
        examples.ref_chosen, examples.ref_rejected = score_pairs(
            model, examples, pad_id, batches, average=config.dpo.length_normalize, bf16=config.train.bf16,
            label=label, progress=config.train.progress)


def first_batches(batches) -> list[list[int]]:
    """The batches that first meet each pair, in order (later batches with no new pair dropped)."""
    seen: set[int] = set()
    kept = []
    for batch in batches:
        if not seen.issuperset(batch):
            kept.append(list(batch))
            seen.update(batch)
    return kept


def pair_length(pair: dict) -> int:
    """Tokens in the row the model reads for a pair: prompt, chosen answer, rejected answer."""
    return len(pair["prompt_ids"]) + len(pair["chosen_ids"]) + len(pair["rejected_ids"])


def _fresh_lora(model) -> bool:
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    return bool(lora_b) and all(not p.any() for p in lora_b)


def dpo_objective(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                  ref_rejected: torch.Tensor, chosen_lengths: torch.Tensor, config: DPOConfig):
    """The DPO loss of a set of pairs (plus RPO's NLL term when ``dpo.sft_weight`` > 0) and its
    metrics. Shape: each (B,) -> loss ()."""
    out = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                   beta=config.dpo.beta, loss_type=config.dpo.loss_type,
                   label_smoothing=config.dpo.label_smoothing,
                   reference_free=config.dpo.reference_free)
    loss = out.losses.mean()
    metrics = dpo_metrics(out)
    metrics["logps/chosen"] = policy_chosen.detach().mean().item()
    metrics["logps/rejected"] = policy_rejected.detach().mean().item()
    if config.dpo.sft_weight > 0:
        summed = policy_chosen * chosen_lengths if config.dpo.length_normalize else policy_chosen
        nll = chosen_nll(summed, chosen_lengths)
        loss = loss + config.dpo.sft_weight * nll
        metrics["nll/chosen"] = nll.item()
    return loss, metrics


def dpo_step_loss(model, batch: dict, config: DPOConfig):
    policy_chosen, policy_rejected = pair_logps(model, batch, average=config.dpo.length_normalize)
    chosen_lengths = batch["completion_mask"][:batch["num_items"]].sum(1)  # (B,)
    return dpo_objective(policy_chosen, policy_rejected, batch["ref_chosen"], batch["ref_rejected"],
                         chosen_lengths, config)


def evaluate_pairs(model, examples: PreferenceExamples, pad_id: int, config: DPOConfig) -> dict[str, float]:
    """Held-out DPO loss and reward accuracy/margin (implicit rewards against the reference), over
    all held-out pairs at once, scored in the batches the reference was scored in and under the
    same autocast, so an untrained policy's implicit rewards are exactly 0."""
    chosen, rejected = score_pairs(model, examples, pad_id, evaluation_batches(len(examples), config.train.batch_size),
                                   average=config.dpo.length_normalize, bf16=config.train.bf16)
    chosen_lengths = torch.tensor([len(pair["chosen_ids"]) for pair in examples.encoded])
    loss, metrics = dpo_objective(chosen, rejected, examples.ref_chosen, examples.ref_rejected, chosen_lengths,
                                  config)
    return {"loss": loss.item(), **metrics}


def train_dpo(config: DPOConfig) -> Path:
    # ---- checked before the model loads or the run folder exists ------------------------
    check_run(config)
    tokenizer = load_tokenizer(config.model.path)
    train = encode_pairs(config.data.train, tokenizer, config)
    held_out = encode_pairs(config.data.eval, tokenizer, config) if config.data.eval else None

    run_dir = start_run(config)
    model, tokenizer = load_policy(config.model, run_dir)
    pad_id = tokenizer.pad_token_id
    console.print(f"{len(train)} training pairs" + (f", {len(held_out)} held out" if held_out else ""))

    lengths = [pair_length(p) for p in train.encoded]
    plan = BatchPlan(epoch_schedule(lengths, config.data, config.train.batch_size),
                     seed=config.train.seed, grad_accum=config.train.grad_accum,
                     max_steps=config.train.max_steps, epochs=config.train.epochs)
    console.print(f"{plan.total_steps} optimizer steps of {config.train.batch_size * config.train.grad_accum} pairs")

    # ---- reference log-probs, once, from the initial weights ----------------------------
    # Under torchrun each rank scores only the pairs of its own micro-batches.
    model.to(distributed.world().device)  # on a GPU, score there (the session would move it later)
    compute_reference(model, train, pad_id, config, first_batches(
        batch for step in range(plan.total_steps)
        for batch in distributed.local_micro_batches(plan.micro_batches(step))))
    if held_out is not None:
        compute_reference(model, held_out, pad_id, config, evaluation_batches(len(held_out), config.train.batch_size),
                          label="held-out reference log-probs")

    # ---- train ------------------------------------------------------------------------
    fit(model, plan, lambda indices: collate_pairs(train, indices, pad_id),
        lambda model, batch: dpo_step_loss(model, batch, config), config,
        evaluate=(lambda model: evaluate_pairs(model, held_out, pad_id, config)) if held_out else None,
        eval_every=config.train.eval_every)

    final_dir = run_dir / "final"
    distributed.save_final_model(model, tokenizer, final_dir, config=config, algorithm="dpo")
    console.print(f"DPO done; model saved to {final_dir}")
    return final_dir
