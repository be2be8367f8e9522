"""``refusal-classifier``: SmolLM2-135M-Instruct fine-tuned (LoRA) as a refusal classifier.

The linear heads (``refusal-head``, ``refusal-states``) read fixed features and stop near 88%: they
miss refusals that deliver something other than what was asked in the requested form. This judge
lets the model's own layers adapt instead. The base SmolLM2-135M-Instruct reads the chat-rendered
pair (user: prompt, assistant: response; the same tokens as ``tether/judges/policy_states.py``),
LoRA adapters on its upper layers and a linear ``score`` head over the state at the response's last
token give one logit, and the score is ``sigmoid(logit)``. The adapter and the threshold are fitted
on the calibration half of the labeled refusal set by ``tether/judges/refusal_classifier_train.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

ADAPTER = Path(__file__).resolve().parents[1] / "resources" / "judges" / "refusal_classifier"
NAME = "refusal-classifier"
BATCH_SIZE = 8
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def classifier_backbone(base=None):
    """A one-logit sequence classifier over the base model's weights, and its tokenizer.

    ``base``: ``(causal_model, tokenizer)`` to start from (tests pass a tiny model); default the
    bundled SmolLM2-135M-Instruct. The classifier scores the last token that is not padding.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    from tether.models.loading import load_tokenizer, resolve_model_path

    torch.manual_seed(0)  # the fresh score head's initial weights
    if base is None:
        tokenizer = load_tokenizer("default")
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path("default"), num_labels=1, dtype=torch.float32, local_files_only=True)
    else:
        causal, tokenizer = base
        config = causal.config.__class__.from_dict({**causal.config.to_dict(), "num_labels": 1})
        model = AutoModelForSequenceClassification.from_config(config)
        # the causal LM head has no place in a classifier; every other weight carries over
        model.load_state_dict(causal.state_dict(), strict=False)
    model.config.pad_token_id = tokenizer.pad_token_id  # scored: the last token that is not padding
    return model, tokenizer


def pair_logits(model, tokenizer, prompts: Sequence[str], responses: Sequence[str]):
    """One logit per pair, in order, with gradients if enabled. Shape: (N,) pairs -> (N,)."""
    import torch

    from tether.judges.policy_states import pair_token_ids

    encoded = [pair_token_ids(p, r, tokenizer)[0] for p, r in zip(prompts, responses)]
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)  # right-padded
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(encoded):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :len(tokens)] = 1
    return model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)


def classifier_scores(model, tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """``sigmoid(logit)`` per pair, in order, batched by similar length."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
    scores = [0.0] * len(prompts)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            logits = pair_logits(model, tokenizer, [prompts[i] for i in batch], [responses[i] for i in batch])
            for i, value in zip(batch, torch.sigmoid(logits.float()).tolist()):
                scores[i] = value
    return scores


class RefusalClassifierJudge:
    """Scores (prompt, response) pairs; ``score >= threshold`` means the response refuses
    (fully or in part)."""

    name = NAME

    def __init__(self, adapter: str | Path = ADAPTER, base=None):
        from peft import PeftModel

        adapter = Path(adapter)
        meta = json.loads((adapter / "judge.json").read_text())
        self.threshold = float(meta["threshold"])
        self.training = meta.get("training", {})
        digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()
                                + repr(self.threshold).encode()).hexdigest()[:12]
        self.version = f"1-{digest}"
        backbone, self._tokenizer = classifier_backbone(base)
        self._model = PeftModel.from_pretrained(backbone, str(adapter)).eval()

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not len(prompts):
            return []
        return classifier_scores(self._model, self._tokenizer, list(prompts), list(responses))


@lru_cache(maxsize=1)
def load_refusal_classifier() -> RefusalClassifierJudge:
    """The shipped judge, loaded once per process."""
    return RefusalClassifierJudge()
