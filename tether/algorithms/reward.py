"""Reward model: a causal LM with a scalar head, trained on preferences with the Bradley-Terry loss.

    tether train reward --config recipes/reward-model.yaml reward.center_coefficient=0.01

The model is Hugging Face's ``AutoModelForSequenceClassification`` with ``num_labels=1`` (for a
Llama checkpoint, ``LlamaForSequenceClassification``): the backbone's last hidden state at the
last non-pad token goes through a linear ``score`` head to one number, r(x, y). ``config.
pad_token_id`` is set from the tokenizer so that token is found; sequences are right-padded.
When pad and EOS are the same token (SmolLM2), the score sits on the token before the final
end-of-turn, in training and at inference alike.

Data: preference pairs, or rankings of K responses expanded to their K(K-1)/2 pairs. Pairs from
one prompt (one ranking, or one prompt text) always share a micro-batch (``grouped_batches``).
A held-out file gives pairwise accuracy and calibration (ECE) during and after training, and the
final model is saved merged (LoRA folded in) as a plain checkpoint that
``AutoModelForSequenceClassification.from_pretrained`` loads, beside ``reward_report.json``.

Under torchrun (docs/scaling.md) ``fit`` deals each step's micro-batches out whole, so a prompt's
pairs stay on one rank; held-out numbers are computed once, on rank 0 with whole weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from tether.config import ModelSettings, RunConfig, Section
from tether.data import encode_preference, load_records, pad_batch, read_rows
from tether.data.records import PreferenceRecord
from tether.data.validation import json_type
from tether.engine import BatchPlan, check_run, console, distributed, fit, start_run
from tether.engine.grouped_batches import grouped_batches, groups_by_key
from tether.engine.plots import plot_metrics
from tether.errors import ConfigError, DataValidationError
from tether.losses.bradley_terry import bradley_terry_loss, bradley_terry_metrics, preference_calibration
from tether.models import evaluation_mode, load_model, load_tokenizer, merge_lora, prepare_tokenizer

REPORT_FILE = "reward_report.json"


class RewardModelSettings(Section):
    # "auto" reads the first row: a `responses` list means rankings, else preference pairs.
    data_kind: Literal["auto", "preference", "ranking"] = "auto"
    # A numeric column of preference rows subtracted inside the sigmoid (Llama 2's margin);
    # None trains without margins.
    margin_column: str | None = None
    # TRL's center_rewards_coefficient: c * mean((r_c + r_r)^2) keeps rewards near 0 (0.01 is usual).
    center_coefficient: float | None = Field(None, ge=0)
    calibration_bins: int = Field(10, gt=1)


class RewardModelConfig(RunConfig):
    reward: RewardModelSettings = RewardModelSettings()

    @model_validator(mode="after")
    def _pairs_are_padded(self) -> RewardModelConfig:
        if self.data.batching == "pack":
            raise ValueError("reward models score each sequence at its last token, so pairs are "
                             "padded, not packed: use data.batching=bucket")
        return self


# ---- model -------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' load report: the missing ``score`` head is expected, we say so ourselves."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_reward_model(settings: ModelSettings):
    """``(model, tokenizer)``: a sequence classifier with one output on the checkpoint's backbone.

    A causal LM checkpoint gets a fresh ``score`` head; a reward-model checkpoint keeps its own.
    A LoRA adapter directory (e.g. an SFT run) is merged into its base first. With
    ``settings.lora``, LoRA adapters are added and the ``score`` head is trained in full
    (peft ``modules_to_save``), so only adapters and head are trainable.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tether.models.loading import resolve_model_path

    path = resolve_model_path(settings.path)
    with _quiet_transformers():
        if (path / "adapter_config.json").is_file():
            causal, tokenizer = load_model(path)
            backbone = merge_lora(causal)
            backbone.config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(backbone.config)
            # The causal LM's lm_head has no place in a classifier; everything else carries over.
            model.load_state_dict(backbone.state_dict(), strict=False)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, local_files_only=True, dtype=torch.float32)
            tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
    fresh = "kept from the checkpoint" if _is_reward_checkpoint(path) else "new, randomly initialised"
    model.config.pad_token_id = tokenizer.pad_token_id  # scored: the last token that is not padding
    if settings.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = settings.lora
        model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, bias="none", task_type="SEQ_CLS",
            modules_to_save=["score"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    console.print(f"reward model on {settings.path}: {total / 1e6:.1f}M parameters, "
                  f"{trainable / 1e6:.2f}M trainable; scalar head {fresh}")
    return model, tokenizer


def _is_reward_checkpoint(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


# ---- data --------------------------------------------------------------------------------

@dataclass
class Comparisons:
    """Tokenized pairs: full sequences (prompt + response) of both sides, and the pair groups.

    Shape: margins (N,) or None; ``groups`` lists the pair indices of each prompt/ranking.
    """

    chosen: list[list[int]]
    rejected: list[list[int]]
    groups: list[list[int]]
    margins: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.chosen)


def data_kind(path: str, settings: RewardModelSettings) -> str:
    if settings.data_kind != "auto":
        return settings.data_kind
    for _, row, _ in read_rows(path):
        if isinstance(row, dict):
            return "ranking" if "responses" in row else "preference"
    return "preference"  # nothing readable: load_records reports the problems


def read_margins(path: str, records: list[PreferenceRecord], column: str) -> torch.Tensor:
    """The margin column of every kept record, from the raw rows (records do not carry extras).

    Raises DataValidationError naming each row whose margin is missing or not a finite number.
    """
    raw = {location: row for location, row, _ in read_rows(path)}
    values, problems = [], []
    for record in records:
        value = raw[record.location].get(column)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            what = "missing" if value is None else f"expected a finite number, got {json_type(value)} {value!r}"
            problems.append(DataValidationError(
                f"{what} (reward.margin_column={column!r})", file=record.location.file,
                line=record.location.line, field=column))
            continue
        values.append(float(value))
    if problems:
        raise DataValidationError(problems[0].problem, problems=problems)
    return torch.tensor(values)


def encode_comparisons(path: str, tokenizer, config: RewardModelConfig) -> Comparisons:
    """Load, validate and tokenize a preference or ranking file (rankings become their pairs)."""
    kind = data_kind(path, config.reward)
    if kind == "ranking" and config.reward.margin_column:
        raise ConfigError("reward.margin_column applies to preference pairs; ranking data has no "
                          "per-pair margins (unset reward.margin_column)")
    records = load_records(path, kind, tokenizer=tokenizer, truncation=config.data.truncation,
                           max_prompt_tokens=config.data.max_prompt_tokens)
    if not records:
        raise DataValidationError("no preference pairs: every ranking is fully tied", file=path)
    chosen, rejected = [], []
    for record in records:
        encoded = encode_preference(record, tokenizer, config.data.max_length)
        chosen.append(encoded["prompt_ids"] + encoded["chosen_ids"])
        rejected.append(encoded["prompt_ids"] + encoded["rejected_ids"])
    # One group per ranking; plain pairs group by their prompt text.
    keys = [r.group_id if r.group_id is not None else json.dumps(r.prompt) for r in records]
    margins = read_margins(path, records, config.reward.margin_column) if config.reward.margin_column else None
    return Comparisons(chosen, rejected, groups_by_key(keys), margins)


def collate_comparisons(data: Comparisons, indices: list[int], pad_id: int) -> dict:
    """Chosen rows first, then rejected rows, right-padded: one forward pass scores both.

    Shape: input_ids, attention_mask (2B, T); margin (B,) when the data has margins.
    """
    rows = [{"input_ids": data.chosen[i]} for i in indices] + [{"input_ids": data.rejected[i]} for i in indices]
    batch = pad_batch(rows, pad_id)
    batch["num_items"] = len(indices)
    if data.margins is not None:
        batch["margin"] = data.margins[indices]
    return batch


# ---- loss and evaluation ------------------------------------------------------------------

def pair_rewards(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """r(x, y_c), r(x, y_r). Shape: (B,) each, float32."""
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    use_cache=False).logits.squeeze(-1).float()  # (2B,)
    half = batch["num_items"]
    return rewards[:half], rewards[half:]


def reward_step_loss(model, batch: dict, config: RewardModelConfig):
    chosen, rejected = pair_rewards(model, batch)
    out = bradley_terry_loss(chosen, rejected, margin=batch.get("margin"),
                             center_coefficient=config.reward.center_coefficient)
    metrics = bradley_terry_metrics(chosen, rejected)
    if config.reward.center_coefficient:
        metrics["centering"] = out.centering.item()
    return out.loss, metrics


@torch.no_grad()
def evaluate_comparisons(model, data: Comparisons, pad_id: int, config: RewardModelConfig, *,
                         with_table: bool = False) -> dict:
    """Held-out loss, pairwise accuracy, mean margin, ECE of sigma(r_c - r_r), reward mean/std."""
    with evaluation_mode(model):
        chosen, rejected = [], []
        size = config.train.batch_size
        # Longest first, so each batch pads little.
        order = sorted(range(len(data)), key=lambda i: -max(len(data.chosen[i]), len(data.rejected[i])))
        device = next(model.parameters()).device
        for start in range(0, len(order), size):
            batch = distributed.to_device(collate_comparisons(data, order[start:start + size], pad_id), device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.bf16):
                c, r = pair_rewards(model, batch)
            chosen.append(c.cpu())
            rejected.append(r.cpu())
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    chosen, rejected = torch.cat(chosen)[inverse], torch.cat(rejected)[inverse]  # (N,) in data order
    out = bradley_terry_loss(chosen, rejected, margin=data.margins,
                             center_coefficient=config.reward.center_coefficient)
    ece, table = preference_calibration(chosen - rejected, config.reward.calibration_bins)
    metrics = bradley_terry_metrics(chosen, rejected)
    both = torch.cat([chosen, rejected])
    result = {"loss": out.loss.item(), "accuracy": metrics["accuracy"], "margin": metrics["margin"],
              "ece": ece, "reward_mean": both.mean().item(), "reward_std": both.std().item()}
    if with_table:
        result["reliability"] = table
    return result


# ---- the run -------------------------------------------------------------------------------

def train_reward_model(config: RewardModelConfig) -> Path:
    started = time.perf_counter()
    # ---- checked before the model loads or the run folder exists ------------------------
    check_run(config)
    tokenizer = load_tokenizer(config.model.path)
    train = encode_comparisons(config.data.train, tokenizer, config)
    held_out = encode_comparisons(config.data.eval, tokenizer, config) if config.data.eval else None

    run_dir = start_run(config)
    model, tokenizer = load_reward_model(config.model)
    pad_id = tokenizer.pad_token_id
    console.print(f"{len(train)} training pairs in {len(train.groups)} prompt groups"
                  + (f", {len(held_out)} held-out pairs" if held_out else ""))

    size = config.train.batch_size
    plan = BatchPlan(lambda seed: grouped_batches(train.groups, size, seed), seed=config.train.seed,
                     grad_accum=config.train.grad_accum, max_steps=config.train.max_steps,
                     epochs=config.train.epochs)
    console.print(f"{plan.total_steps} optimizer steps of about {size * config.train.grad_accum} pairs "
                  "(whole prompt groups per micro-batch)")

    # Held-out numbers come from rank 0 alone (whole weights), so they are the one-process numbers.
    before = distributed.on_main(model, lambda: evaluate_comparisons(model, held_out, pad_id, config)
                                 ) if held_out else None
    if before:
        console.print(f"held out before training: accuracy {before['accuracy']:.3f}, ECE {before['ece']:.3f}")

    # ---- train ------------------------------------------------------------------------
    result = fit(model, plan, lambda indices: collate_comparisons(train, indices, pad_id),
                 lambda model, batch: reward_step_loss(model, batch, config), config,
                 evaluate=(lambda model: evaluate_comparisons(model, held_out, pad_id, config))
                 if held_out else None,
                 eval_every=config.train.eval_every)

    # ---- report and a standalone checkpoint ---------------------------------------------
    after = distributed.on_main(model, lambda: evaluate_comparisons(
        model, held_out, pad_id, config, with_table=True)) if held_out else None
    if hasattr(model, "merge_and_unload"):
        model = merge_lora(model)
    final_dir = distributed.save_final_model(model, tokenizer, run_dir / "final",
                                            config=config, algorithm="reward")
    if not distributed.is_main():
        return final_dir
    plot_metrics(run_dir, ["loss", "accuracy", "eval/accuracy", "eval/ece"], run_dir / "curves.png",
                 title=f"reward model {config.train.run_name}")
    report = {
        "model": str(final_dir), "base_model": config.model.path,
        "train_pairs": len(train), "train_groups": len(train.groups),
        "held_out_pairs": len(held_out) if held_out else 0,
        "steps": result.steps, "resumed_from": result.resumed_from,
        "final_train": {key: value for key, value in (result.history[-1] if result.history else {}).items()
                        if not key.startswith("eval/")},
        "held_out_before": before, "held_out_after": after,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if after:
        console.print(f"held out after training: accuracy {after['accuracy']:.3f}, ECE {after['ece']:.3f}")
    console.print(f"reward model saved to {final_dir}; report in {run_dir / REPORT_FILE}")
    return final_dir
