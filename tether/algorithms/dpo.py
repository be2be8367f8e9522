"""Direct Preference Optimization (and IPO, hinge, robust/conservative variants).

    tether train dpo --config recipes/safety-dpo.yaml dpo.beta=0.1

The reference model's log-probabilities are computed once, before training, with the initial
weights; no second model sits in memory while the policy trains.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from tether.algorithms.common import epoch_schedule, load_policy
from tether.config import RunConfig, Section
from tether.data import encode_preference, load_records
from tether.engine import BatchPlan, check_run, console, distributed, fit, progress_bar, start_run
from tether.losses.dpo import chosen_nll, dpo_loss, dpo_metrics
from tether.losses.logprobs import packed_prompt_token_logps
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


@dataclass
class PreferenceExamples:
    """Tokenized pairs plus their reference log-probs, filled in once by ``compute_reference``."""

    encoded: list[dict]
    ref_chosen: torch.Tensor | None = None  # (N,)
    ref_rejected: torch.Tensor | None = None  # (N,)

    def __len__(self) -> int:
        return len(self.encoded)


def encode_pairs(path: str, tokenizer, config: DPOConfig) -> PreferenceExamples:
    records = load_records(path, "preference", tokenizer=tokenizer, truncation=config.data.truncation,
                           max_prompt_tokens=config.data.max_prompt_tokens)
    return PreferenceExamples([encode_preference(r, tokenizer, config.data.max_length) for r in records])


def collate_pairs(examples: PreferenceExamples, indices: list[int], pad_id: int) -> dict:
    """Each pair's prompt once (left-padded), then its chosen and rejected answers (right-padded):
    the model reads each pair as one row, prompt then both answers (``packed_prompt_token_logps``).

    Shape: prompt_ids, prompt_mask (B, S); completion_ids, completion_mask (2B, L), chosen rows
    first; ref_* (B,).
    """
    pairs = [examples.encoded[i] for i in indices]
    prompts = [p["prompt_ids"] for p in pairs]
    answers = [p[side] for side in ("chosen_ids", "rejected_ids") for p in pairs]
    width, length = max(map(len, prompts)), max(map(len, answers))
    batch = {
        "prompt_ids": torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts]),
        "prompt_mask": torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts]),
        "completion_ids": torch.tensor([ids + [pad_id] * (length - len(ids)) for ids in answers]),
        "completion_mask": torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in answers]),
        "num_items": len(indices),
    }
    if examples.ref_chosen is not None:
        batch["ref_chosen"] = examples.ref_chosen[indices]
        batch["ref_rejected"] = examples.ref_rejected[indices]
    return batch


def pair_logps(model, batch: dict, *, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y | x) of the chosen and of the rejected answers (summed over tokens, or averaged).
    Shape: (B,), (B,)."""
    half = batch["num_items"]
    prompt_of_row = torch.arange(half, device=batch["prompt_ids"].device).repeat(2)  # (2B,)
    token_logps = packed_prompt_token_logps(model, batch["prompt_ids"], batch["prompt_mask"], prompt_of_row,
                                            batch["completion_ids"], batch["completion_mask"])  # (2B, L)
    mask = batch["completion_mask"].to(token_logps.dtype)
    logps = (token_logps * mask).sum(1)  # (2B,)
    if average:
        logps = logps / mask.sum(1).clamp(min=1.0)
    return logps[:half], logps[half:]


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
    examples.ref_chosen = torch.full((len(examples),), float("nan"))
    examples.ref_rejected = torch.full((len(examples),), float("nan"))
    was_training = model.training
    model.eval()
    # A fresh LoRA (B = 0) computes exactly the base model: skip the adapter matmuls.
    base_only = reference_mode(model) if _fresh_lora(model) else contextlib.nullcontext()
    with progress_bar(label, sum(map(len, batches)), enabled=config.train.progress) as bar, base_only:
        for chunk in batches:
            batch = distributed.to_device(collate_pairs(examples, chunk, pad_id), model.device)
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=config.train.bf16):
                chosen, rejected = pair_logps(model, batch, average=config.dpo.length_normalize)
            examples.ref_chosen[chunk] = chosen.float().cpu()
            examples.ref_rejected[chunk] = rejected.float().cpu()
            bar.advance(len(chunk))
    model.train(was_training)


def first_batches(batches) -> list[list[int]]:
    """The batches that first meet each pair, in order (later batches with no new pair dropped)."""
    seen: set[int] = set()
    kept = []
    for batch in batches:
        if not seen.issuperset(batch):
            kept.append(list(batch))
            seen.update(batch)
    return kept


def evaluation_batches(count: int, size: int) -> list[list[int]]:
    """The held-out pairs in order, ``size`` at a time (as ``evaluate_pairs`` reads them)."""
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def pair_length(pair: dict) -> int:
    """Tokens in the row the model reads for a pair: prompt, chosen answer, rejected answer."""
    return len(pair["prompt_ids"]) + len(pair["chosen_ids"]) + len(pair["rejected_ids"])


def _fresh_lora(model) -> bool:
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    return bool(lora_b) and all(not p.any() for p in lora_b)


def dpo_step_loss(model, batch: dict, config: DPOConfig):
    policy_chosen, policy_rejected = pair_logps(model, batch, average=config.dpo.length_normalize)
    out = dpo_loss(policy_chosen, policy_rejected, batch["ref_chosen"], batch["ref_rejected"],
                   beta=config.dpo.beta, loss_type=config.dpo.loss_type,
                   label_smoothing=config.dpo.label_smoothing,
                   reference_free=config.dpo.reference_free)
    loss = out.losses.mean()
    metrics = dpo_metrics(out)
    metrics["logps/chosen"] = policy_chosen.detach().mean().item()
    metrics["logps/rejected"] = policy_rejected.detach().mean().item()
    if config.dpo.sft_weight > 0:
        chosen_lengths = batch["completion_mask"][:batch["num_items"]].sum(1)  # (B,)
        summed = policy_chosen * chosen_lengths if config.dpo.length_normalize else policy_chosen
        nll = chosen_nll(summed, chosen_lengths)
        loss = loss + config.dpo.sft_weight * nll
        metrics["nll/chosen"] = nll.item()
    return loss, metrics


def evaluate_pairs(model, examples: PreferenceExamples, pad_id: int, config: DPOConfig) -> dict[str, float]:
    """Held-out DPO loss and reward accuracy/margin (implicit rewards against the reference)."""
    totals: dict[str, float] = {}
    for indices in evaluation_batches(len(examples), config.train.batch_size):
        batch = collate_pairs(examples, indices, pad_id)
        batch = distributed.to_device(batch, distributed.world().device)
        loss, metrics = dpo_step_loss(model, batch, config)
        for key, value in {"loss": loss.item(), **metrics}.items():
            totals[key] = totals.get(key, 0.0) + value * batch["num_items"]
    return {key: value / len(examples) for key, value in totals.items()}


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
        batch for step in range(plan.total_steps) for batch in distributed.local_micro_batches(plan.micro_batches(step))))
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
