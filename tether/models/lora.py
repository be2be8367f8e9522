"""LoRA adapters via ``peft``, and the adapter-disabled base model as a free reference model.

LoRA (Hu et al., 2021) freezes each targeted weight ``W`` (out x in) and learns a low-rank
update::

    W' = W + (alpha / r) * B @ A        A: (r, in), B: (out, r), B initialised to 0

so at initialisation ``W' = W`` exactly. DPO, PPO and GRPO need a frozen reference policy
``pi_ref``; with LoRA the base weights *are* that reference, so ``reference_mode`` turns the
adapters off instead of keeping a second copy of the model in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from tether.errors import ConfigError


def apply_lora(model: PreTrainedModel, *, r: int = 16, alpha: float = 32,
               dropout: float = 0.0, target_modules: str | list[str] = "all-linear") -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters; only adapter weights stay trainable.

    ``target_modules="all-linear"`` adapts every linear layer except the output head (peft's
    rule); pass names like ``["q_proj", "v_proj"]`` to adapt fewer. ``model`` itself is modified
    in place (its linear layers are replaced by LoRA layers), so use the returned model only.
    """
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=target_modules, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


@contextmanager
def reference_mode(model: PeftModel) -> Iterator[PeftModel]:
    """Inside the block, ``model`` computes the base model's outputs (adapters disabled).

    Use it for reference log-probs: ``with torch.no_grad(), reference_mode(policy): ref = ...``.
    The adapters come back on exit, also when the block raises.

    Raises:
        ConfigError: ``model`` has no LoRA adapters, so there is no base to fall back to.
    """
    if not isinstance(model, PeftModel):
        raise ConfigError(
            f"reference_mode needs a LoRA model (peft.PeftModel), got {type(model).__name__}. "
            "A fully fine-tuned policy has no frozen base inside it: load a separate reference "
            "model, or train with LoRA (apply_lora) to use the adapter-disabled base."
        )
    with model.disable_adapter():
        yield model


def merge_lora(model: PeftModel) -> PreTrainedModel:
    """Fold the adapters into the base weights (``W <- W + (alpha/r) B A``) and return the base.

    The result is a plain ``transformers`` model to save as a standalone checkpoint; the
    ``PeftModel`` passed in should not be used afterwards.
    """
    if not isinstance(model, PeftModel):
        raise ConfigError(f"merge_lora needs a LoRA model (peft.PeftModel), got "
                          f"{type(model).__name__}; a model without adapters is already merged.")
    return model.merge_and_unload()
