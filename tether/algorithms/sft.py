"""Supervised fine-tuning: next-token loss on completion tokens only.

    tether train sft --config tether:recipes/sft-demo.yaml optim.lr=1e-4
"""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from tether.algorithms.common import epoch_schedule, load_policy
from tether.config import RunConfig
from tether.data import encode_sft, load_records, pack_batch, pad_batch
from tether.engine import BatchPlan, check_run, console, distributed, fit, start_run
from tether.losses.sft import labelled_positions, next_token_loss, sft_loss
from tether.models import load_tokenizer


class SFTConfig(RunConfig):
    @model_validator(mode="after")
    def _pack_needs_token_budget(self) -> SFTConfig:
        if self.data.batching == "pack" and self.train.batch_size < self.data.max_length:
            raise ValueError("with data.batching=pack, train.batch_size is a token budget and must be "
                             f">= data.max_length ({self.data.max_length}); got {self.train.batch_size}")
        return self


def train_sft(config: SFTConfig) -> Path:
    # ---- checked before the model loads or the run folder exists ------------------------
    check_run(config)
    tokenizer = load_tokenizer(config.model.path)

    def encode(path: str) -> list[dict]:
        records = load_records(path, "sft", tokenizer=tokenizer, truncation=config.data.truncation,
                               max_prompt_tokens=config.data.max_prompt_tokens)
        return [encode_sft(record, tokenizer, config.data.max_length) for record in records]

    examples = encode(config.data.train)
    eval_examples = encode(config.data.eval) if config.data.eval else []
    packing = config.data.batching == "pack"

    run_dir = start_run(config)
    model, tokenizer = load_policy(config.model, run_dir)

    def collate(indices: list[int], source: list[dict] = examples) -> dict:
        chosen = [source[i] for i in indices]
        batch = pack_batch(chosen) if packing else pad_batch(chosen, tokenizer.pad_token_id)
        batch["num_items"] = int((batch["labels"][:, 1:] != -100).sum())  # completion tokens
        return batch

    plan = BatchPlan(epoch_schedule([len(e["input_ids"]) for e in examples], config.data,
                                    config.train.batch_size),
                     seed=config.train.seed, grad_accum=config.train.grad_accum,
                     max_steps=config.train.max_steps, epochs=config.train.epochs)
    console.print(f"{len(examples)} training examples, {plan.total_steps} optimizer steps")

    # ---- the loss ------------------------------------------------------------------------
    def compute_loss(model, batch):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        # Logits only where a label is read: the lm_head skips the prompts (K <= T - 1 positions).
        positions = labelled_positions(batch["labels"])  # (K,)
        # No KV cache: with one, transformers ignores packed position ids and attends across sequences.
        logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits  # (B, K, V)
        loss, num_tokens = next_token_loss(logits, batch["labels"][:, positions + 1])
        return loss, {"tokens": float(num_tokens)}

    def evaluate(model) -> dict[str, float]:
        total_loss, total_tokens = 0.0, 0
        for start in range(0, len(eval_examples), config.train.batch_size):
            indices = list(range(start, min(start + config.train.batch_size, len(eval_examples))))
            batch = distributed.to_device(pad_batch([eval_examples[i] for i in indices], tokenizer.pad_token_id),
                                          distributed.world().device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits
            loss, num_tokens = sft_loss(logits, batch["labels"])
            total_loss += loss.item() * num_tokens
            total_tokens += num_tokens
        return {"loss": total_loss / max(total_tokens, 1)}

    # ---- train ---------------------------------------------------------------------------
    result = fit(model, plan, collate, compute_loss, config,
                 evaluate=evaluate if eval_examples else None,
                 eval_every=config.train.eval_every)
    final_dir = run_dir / "final"
    distributed.save_final_model(model, tokenizer, final_dir, config=config, algorithm="sft")
    if result.history:
        first, last = result.history[0]["loss"], result.history[-1]["loss"]
        console.print(f"SFT done: loss {first:.4f} -> {last:.4f}; model saved to {final_dir}")
    return final_dir
