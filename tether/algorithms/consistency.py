"""Consistency training: answer a wrapped prompt as the clean one (BCT), or read it the same (ACT).

    tether train consistency --config recipes/consistency.yaml consistency.method=bct

1. Targets, once, from the starting weights: the model's own greedy answer to every clean prompt
   (``consistency_targets.jsonl`` in the run folder; a resumed run reads them back).
2. Examples: every clean prompt under every ``train`` wrapper template (jailbreak framings,
   sycophancy cues, paraphrases; ``tether/resources/consistency/wrappers.yaml``). Held-out
   templates are never trained on: the ``jailbreak_refusal`` audit measures them.
3. Loss (``tether/losses/consistency.py``): BCT, the SFT loss of the clean answer after the wrapped
   prompt; ACT, the squared distance between the wrapped and the (detached) clean prompt's residual
   stream at its last ``act_tokens`` tokens, on ``act_layers``; or both, weighted. Optionally an
   anchor on the clean prompts (``anchor: sft | kl``): each batch also scores its rows' clean prompt
   -> clean answer, trained as a target (sft) or held at the starting model's log-probs (kl; the
   reference is computed once, ``consistency_anchor_reference.jsonl`` in the run folder).

With ``target_judge``, a clean answer is a target only where it already shows the behaviour the
wrappers should not change: a prompt labelled ``kind: harmful`` whose clean answer the judge reads
as a refusal, a benign one (``benign`` / ``benign_lookalike``) answered without one. Plain BCT copies
every clean answer onto the wrappers, compliance with a harmful request included, so a model that
refuses half its clean harmful requests learns to comply under a wrapper as often as to refuse.
The verdicts are kept in ``consistency_target_verdicts.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from tether.algorithms.common import epoch_schedule, load_policy
from tether.config import RunConfig, Section
from tether.data import SFTRecord, encode_sft, load_records, pad_batch
from tether.data.tokenize import encode_prompt
from tether.data.wrappers import DEFAULT_WRAPPERS, load_wrappers
from tether.engine import BatchPlan, check_run, console, distributed, fit, start_run
from tether.errors import ConfigError
from tether.feedback.generate import write_jsonl
from tether.losses.consistency import activation_consistency_loss, anchor_kl_loss
from tether.losses.logprobs import token_logps
from tether.losses.sft import sft_loss
from tether.models import evaluation_mode, load_tokenizer
from tether.rollout.generate import generate_responses

TARGETS_FILE = "consistency_targets.jsonl"
ANCHOR_REFERENCE_FILE = "consistency_anchor_reference.jsonl"
VERDICTS_FILE = "consistency_target_verdicts.jsonl"
HARMFUL_KINDS = {"harmful"}
BENIGN_KINDS = {"benign", "benign_lookalike"}


class ConsistencySettings(Section):
    method: Literal["bct", "act", "both"] = "bct"
    wrappers: str = DEFAULT_WRAPPERS
    categories: list[str] | None = None  # train only these wrapper categories (None: all)
    target_max_new_tokens: int = Field(64, gt=0)  # length of the clean answers BCT trains on
    act_layers: list[int] | None = None  # hidden_states indices (1..num_layers); None: every block's output
    act_tokens: int = Field(4, gt=0)  # last prompt tokens compared (the generation prompt and turn end)
    act_weight: float = Field(1.0, ge=0)  # with method "both": L = L_BCT + act_weight * L_ACT
    # Hold the clean prompt -> clean answer in place while the wrapped ones move: none; sft (train it
    # as a target too); kl (k3 divergence from the starting model's log-probs on its tokens).
    anchor: Literal["none", "sft", "kl"] = "none"
    anchor_weight: float = Field(1.0, ge=0)  # L = L_method + anchor_weight * L_anchor
    # A refusal judge's name: train only on clean answers that refuse a `kind: harmful` prompt or
    # help a benign one (module docstring); None: every clean answer (plain BCT).
    target_judge: str | None = None


class ConsistencyConfig(RunConfig):
    consistency: ConsistencySettings = ConsistencySettings()


def clean_targets(model, tokenizer, prompts: list, config: ConsistencyConfig, run_dir: Path) -> list[str]:
    """The model's own greedy answers to the clean prompts, generated once and kept in the run folder."""
    path = run_dir / TARGETS_FILE

    def generate():
        answers = generate_responses(model, tokenizer, prompts, progress=config.train.progress,
                                     max_new_tokens=config.consistency.target_max_new_tokens,
                                     description="clean answers (BCT targets)")
        write_jsonl(path, ({"prompt": p, "target": a} for p, a in zip(prompts, answers)))

    distributed.main_writes(path, generate, "generating the clean answers")
    return [json.loads(line)["target"] for line in path.read_text().splitlines()]


def wanted_behaviour(kind: str | None, refused: bool) -> bool:
    """Whether a clean answer is a target: a refusal of a harmful prompt, help on a benign one;
    any answer to a prompt with no (or another) kind."""
    if kind in HARMFUL_KINDS:
        return refused
    if kind in BENIGN_KINDS:
        return not refused
    return True


def target_verdicts(rows, targets: list[str], judge_name: str, run_dir: Path) -> list[bool]:
    """Per clean prompt, whether its clean answer is kept as a target (``wanted_behaviour`` by the
    judge ``judge_name``), judged once and kept in the run folder."""
    path = run_dir / VERDICTS_FILE

    def judge():
        from tether.judges import decide, get_judge

        judge = get_judge(judge_name)
        refused = decide(judge, [prompt for _, prompt, _ in rows], targets)
        write_jsonl(path, ({"id": row_id, "kind": extra.get("kind"), "refused": verdict,
                            "keep": wanted_behaviour(extra.get("kind"), verdict), "judge": judge.name}
                           for (row_id, _, extra), verdict in zip(rows, refused)))

    distributed.main_writes(path, judge, "judging the clean answers")
    return [json.loads(line)["keep"] for line in path.read_text().splitlines()]


def encode_anchors(rows, targets: list[str], tokenizer, config: ConsistencyConfig) -> list[dict | None]:
    """Per clean prompt, the clean prompt followed by its clean answer (labels on the answer), or None
    where the answer is empty or no answer token fits in max_length."""
    anchors = []
    for (_, prompt, _), target in zip(rows, targets):
        encoded = encode_sft(SFTRecord(prompt=prompt, completion=target), tokenizer, config.data.max_length)
        has_answer = target.strip() and any(label != -100 for label in encoded["labels"][1:])
        anchors.append({"input_ids": encoded["input_ids"], "labels": encoded["labels"]} if has_answer else None)
    return anchors


@torch.no_grad()
def anchor_reference(model, anchors: list[dict | None], pad_id: int, config: ConsistencyConfig, run_dir: Path) -> None:
    """log pi_ref of each anchor's answer tokens under the starting weights, scored once (right-padded
    batches of ``train.batch_size``, under the run's autocast), kept in the run folder and read back
    on resume; stored in ``anchor["ref_logps"]``."""
    path = run_dir / ANCHOR_REFERENCE_FILE

    def score():
        present = [i for i, anchor in enumerate(anchors) if anchor is not None]
        values: list[list[float] | None] = [None] * len(anchors)
        size = config.train.batch_size
        with evaluation_mode(model) as device:
            for chunk in (present[start:start + size] for start in range(0, len(present), size)):
                batch = pad_batch([{"input_ids": anchors[i]["input_ids"], "labels": anchors[i]["labels"]}
                                   for i in chunk], pad_id)
                batch = distributed.to_device(batch, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.bf16):
                    logps = token_logps(model, batch["input_ids"], batch["attention_mask"])  # (B, T-1)
                answer = batch["labels"][:, 1:] != -100
                for row, i in enumerate(chunk):
                    values[i] = logps[row][answer[row]].float().cpu().tolist()
        write_jsonl(path, ({"ref_logps": v} for v in values))

    distributed.main_writes(path, score, "scoring the clean answers under the starting model (anchor reference)")
    for anchor, line in zip(anchors, path.read_text().splitlines()):
        if anchor is not None:
            anchor["ref_logps"] = json.loads(line)["ref_logps"]


def build_examples(rows, targets: list[str] | None, wrappers, tokenizer, config: ConsistencyConfig,
                   keep: list[bool] | None = None) -> list[dict]:
    """One example per (clean prompt, train wrapper): the wrapped prompt followed by the clean answer,
    labels on the answer only, plus the clean prompt's ids for ACT. Without targets (ACT alone) the
    example is the wrapped prompt by itself: ACT reads prompt tokens only. ``keep``: per clean
    prompt, whether it makes examples at all (``target_verdicts``)."""
    examples = []
    for index, (row_id, prompt, extra) in enumerate(rows):
        if keep is not None and not keep[index]:
            continue
        target = None if targets is None else targets[index]
        clean_ids = encode_prompt(prompt, tokenizer)
        for wrapper in wrappers:
            wrapped = wrapper.apply(prompt, extra.get("suggestion"))
            if wrapped is None or (target is not None and not target.strip()):
                continue
            prompt_ids = encode_prompt(wrapped, tokenizer)
            if target is None:
                encoded = {"input_ids": prompt_ids, "labels": [-100] * len(prompt_ids)}
            else:
                record = (SFTRecord(prompt=wrapped, completion=target) if isinstance(wrapped, str)
                          else SFTRecord(messages=[*wrapped, {"role": "assistant", "content": target}]))
                encoded = encode_sft(record, tokenizer, config.data.max_length)
                if len(prompt_ids) >= len(encoded["input_ids"]):
                    continue  # no answer token fits in max_length
                # The loss covers the clean answer only, not a template's scripted assistant turns.
                encoded["labels"] = [-100] * len(prompt_ids) + encoded["labels"][len(prompt_ids):]
            examples.append({**encoded, "prompt_length": len(prompt_ids), "clean_ids": clean_ids, "row": index,
                             "source": f"{row_id}:{wrapper.name}"})
    return examples


def collate(examples: list[dict], indices: list[int], pad_id: int, method: str,
            anchors: list[dict | None] | None = None) -> dict:
    chosen = [examples[i] for i in indices]
    batch = pad_batch([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in chosen], pad_id)
    width = max(len(e["clean_ids"]) for e in chosen)
    batch["clean_ids"] = torch.tensor([[pad_id] * (width - len(e["clean_ids"])) + e["clean_ids"] for e in chosen])
    batch["clean_mask"] = torch.tensor([[0] * (width - len(e["clean_ids"])) + [1] * len(e["clean_ids"])
                                        for e in chosen])
    batch["prompt_length"] = torch.tensor([e["prompt_length"] for e in chosen])
    # Micro-batches are weighted by num_items: answer tokens for BCT, rows for ACT alone.
    batch["num_items"] = int((batch["labels"][:, 1:] != -100).sum()) if method != "act" else len(chosen)
    rows_anchors = [anchors[e["row"]] for e in chosen if anchors[e["row"]] is not None] if anchors else []
    if rows_anchors:
        anchor = pad_batch([{"input_ids": a["input_ids"], "labels": a["labels"]} for a in rows_anchors], pad_id)
        answer = anchor["labels"][:, 1:] != -100  # (B, T-1), aligned with token_logps' columns
        reference = torch.zeros(answer.shape)
        for row, a in enumerate(rows_anchors):
            if "ref_logps" in a:
                reference[row, answer[row]] = torch.tensor(a["ref_logps"])
        batch.update(anchor_ids=anchor["input_ids"], anchor_mask=anchor["attention_mask"],
                     anchor_labels=anchor["labels"], anchor_ref_logps=reference)
    return batch


def consistency_loss(model, batch: dict, settings: ConsistencySettings) -> tuple[torch.Tensor, dict[str, float]]:
    use_act = settings.method in ("act", "both")
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=use_act, use_cache=False)
    metrics: dict[str, float] = {}
    loss = torch.zeros((), device=batch["input_ids"].device)
    if settings.method in ("bct", "both"):
        bct, _ = sft_loss(out.logits, batch["labels"])
        loss = loss + bct
        metrics["loss/bct"] = bct.item()
    if use_act:
        layers = settings.act_layers or list(range(1, len(out.hidden_states)))
        k = settings.act_tokens
        rows = torch.arange(len(batch["input_ids"]), device=batch["input_ids"].device)[:, None]
        positions = batch["prompt_length"][:, None] - k + torch.arange(k, device=rows.device)  # (B, K)
        wrapped = torch.stack([out.hidden_states[layer][rows, positions] for layer in layers])  # (layers, B, K, H)
        with torch.no_grad():
            position_ids = (batch["clean_mask"].cumsum(1) - 1).clamp(min=0)  # left padding
            clean_out = model(input_ids=batch["clean_ids"], attention_mask=batch["clean_mask"],
                              position_ids=position_ids, output_hidden_states=True, use_cache=False)
            clean = torch.stack([clean_out.hidden_states[layer][:, -k:] for layer in layers])  # (layers, B, K, H)
        act = activation_consistency_loss(wrapped, clean)
        loss = loss + (settings.act_weight if settings.method == "both" else 1.0) * act
        metrics["loss/act"] = act.item()
    if settings.anchor != "none" and "anchor_ids" in batch:
        anchor = anchor_loss(model, batch, settings.anchor)
        loss = loss + settings.anchor_weight * anchor
        metrics[f"loss/anchor_{settings.anchor}"] = anchor.item()
    return loss, metrics


def anchor_loss(model, batch: dict, kind: str) -> torch.Tensor:
    """The clean prompts' anchor: SFT on their clean answers, or k3 divergence from the reference."""
    if kind == "sft":
        logits = model(input_ids=batch["anchor_ids"], attention_mask=batch["anchor_mask"], use_cache=False).logits
        return sft_loss(logits, batch["anchor_labels"])[0]
    logps = token_logps(model, batch["anchor_ids"], batch["anchor_mask"])  # (B, T-1)
    return anchor_kl_loss(logps, batch["anchor_ref_logps"], batch["anchor_labels"][:, 1:] != -100)


def train_consistency(config: ConsistencyConfig) -> Path:
    settings = config.consistency
    # ---- checked before the model loads or the run folder exists ------------------------
    check_run(config)
    wrappers = [w for w in load_wrappers(settings.wrappers, "train")
                if settings.categories is None or w.category in settings.categories]
    if not wrappers:
        raise ConfigError(f"no train wrappers in consistency.categories {settings.categories}")
    if config.data.batching != "bucket":
        raise ConfigError("consistency training reads each wrapped prompt's last tokens: use data.batching=bucket")
    tokenizer = load_tokenizer(config.model.path)
    records = load_records(config.data.train, "prompt", tokenizer=tokenizer, truncation=config.data.truncation,
                           max_prompt_tokens=config.data.max_prompt_tokens)
    if any(not isinstance(record.prompt, str) for record in records):
        raise ConfigError(f"{config.data.train}: consistency training wraps plain-text prompts; found a chat prompt")
    rows = [(record.id or str(index), record.prompt, record.extras) for index, record in enumerate(records)]
    if settings.target_judge is not None:
        from tether.judges import get_judge

        get_judge(settings.target_judge)  # an unknown name fails before the model loads
        if not any(extra.get("kind") in HARMFUL_KINDS | BENIGN_KINDS for _, _, extra in rows):
            kinds = sorted(HARMFUL_KINDS | BENIGN_KINDS)
            raise ConfigError(f"consistency.target_judge keeps answers by each prompt's kind, but no row of "
                              f"{config.data.train} has kind {kinds}; label them, or set "
                              "consistency.target_judge=null to train on every clean answer")

    run_dir = start_run(config)
    model, tokenizer = load_policy(config.model, run_dir)
    model.to(distributed.world().device)

    # ---- targets from the starting weights (BCT), then wrapped examples --------------------
    needs_targets = settings.method != "act" or settings.anchor != "none" or settings.target_judge is not None
    clean_prompts = [prompt for _, prompt, _ in rows]
    targets = clean_targets(model, tokenizer, clean_prompts, config, run_dir) if needs_targets else None
    keep = None
    if settings.target_judge is not None:
        keep = target_verdicts(rows, targets, settings.target_judge, run_dir)
        console.print(f"{sum(keep)} of {len(rows)} clean answers kept as targets by {settings.target_judge} "
                      f"(harmful refused, benign helped; {VERDICTS_FILE})")
    examples = build_examples(rows, None if settings.method == "act" else targets, wrappers, tokenizer, config,
                              keep)
    anchors = None
    if settings.anchor != "none":
        anchors = encode_anchors(rows, targets, tokenizer, config)
        if settings.anchor == "kl":
            anchor_reference(model, anchors, tokenizer.pad_token_id, config, run_dir)
    console.print(f"{len(rows)} clean prompts x {len(wrappers)} wrappers -> {len(examples)} examples "
                  f"({settings.method}, anchor {settings.anchor})")
    plan = BatchPlan(epoch_schedule([len(e["input_ids"]) for e in examples], config.data, config.train.batch_size),
                     seed=config.train.seed, grad_accum=config.train.grad_accum,
                     max_steps=config.train.max_steps, epochs=config.train.epochs)

    # ---- train ---------------------------------------------------------------------------
    fit(model, plan, lambda indices: collate(examples, indices, tokenizer.pad_token_id, settings.method, anchors),
        lambda model, batch: consistency_loss(model, batch, settings), config)
    final_dir = run_dir / "final"
    distributed.save_final_model(model, tokenizer, final_dir, config=config, algorithm="consistency")
    console.print(f"consistency training done; model saved to {final_dir}")
    return final_dir
