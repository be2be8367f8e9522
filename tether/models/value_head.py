"""A policy with a value head: PPO's actor and critic in one model.

The critic V(x, y_<t) is a linear layer on the policy's final hidden state h_{t-1}, the same state
the language-model head reads to predict y_t:

    log pi(y_t | x, y_<t) = log_softmax(W_lm h_{t-1})[y_t]          (the actor)
    V_t                   = w_v . h_{t-1} + b_v                      (the critic)

Why a head on the policy's backbone and not a second model (TRL's PPOTrainer used a separate value
model, usually initialised from the reward model): on a CPU, memory and time are the limit. One forward
pass gives both log-probs and values, and no second copy of the weights is held. With LoRA the reference
policy is still the adapter-disabled base (``tether.models.reference_mode``), so the whole PPO step
holds one model.

By default the head reads the hidden states *detached* (``train_backbone=False``): the value loss
trains the head only, a linear probe of the policy's features. Measured on the tiny test model with
LoRA, letting the value loss into the shared adapters made it dominate them (Adam normalizes each
parameter's step, so the larger value gradient sets the direction) and the reward stopped rising;
detached, the critic cannot pull the policy around. ``train_backbone=True`` is the classic shared
actor-critic (TRL's old ``AutoModelForCausalLMWithValueHead``).

The head starts at zero (V = 0 everywhere), so the first value predictions do not inject noise into
the advantages; it is kept in float32 even under bf16 autocast.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file
from torch import Tensor, nn

from tether.losses.logprobs import selective_log_softmax

VALUE_HEAD_FILE = "value_head.safetensors"


def causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside ``model`` (a PeftModel's base, whose layers carry the LoRA)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


class ValueHead(nn.Module):
    """V = w . h + b, one scalar per position. Shape: (B, T, H) -> (B, T), float32."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return self.summary(hidden.float()).squeeze(-1)


class PolicyWithValueHead(nn.Module):
    """``policy`` (a causal LM, LoRA-wrapped or not) plus a ``value_head``; train and checkpoint it as
    one module (the engine saves every trainable parameter, adapters and head alike)."""

    def __init__(self, policy: nn.Module, *, train_backbone: bool = False):
        super().__init__()
        self.policy = policy
        self.value_head = ValueHead(causal_lm(policy).config.hidden_size)
        self.train_backbone = train_backbone

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *, start: int
                ) -> tuple[Tensor, Tensor]:
        """Log-probs of tokens ``input_ids[:, start:]`` and the values of the states before them.

        The lm head runs only on the positions that predict those tokens, as in ``token_logps``.

        Shape:
            input_ids, attention_mask, position_ids: (B, S + L), completion tokens from column start = S
            output: logps (B, L) float32, values (B, L) float32
        """
        lm = causal_lm(self.policy)
        hidden = self.features(input_ids, attention_mask, position_ids, start=start)  # (B, L, H)
        logits = lm.get_output_embeddings()(hidden)  # (B, L, V)
        logps = selective_log_softmax(logits, input_ids[:, start:])  # (B, L)
        values = self.value_head(hidden if self.train_backbone else hidden.detach())
        return logps, values  # (B, L), (B, L)

    def features(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *, start: int) -> Tensor:
        """h_{t-1} for each completion token y_t = ``input_ids[:, start:]``: what both heads read.

        Shape: input_ids, attention_mask, position_ids (B, S + L) -> (B, L, H)
        """
        hidden = causal_lm(self.policy).get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=False).last_hidden_state  # (B, S+L, H)
        return hidden[:, start - 1:-1]


def save_value_head(head: ValueHead, directory: str | Path) -> Path:
    path = Path(directory) / VALUE_HEAD_FILE
    save_file({name: p.detach().contiguous() for name, p in head.state_dict().items()}, str(path))
    return path

