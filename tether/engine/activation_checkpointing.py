"""Activation (gradient) checkpointing: ``train.gradient_checkpointing``.

Each decoder layer keeps only its input during the forward and recomputes its activations in the
backward, so peak memory holds one layer's activations instead of all of them, for about one more
forward's compute. Loss and gradients stay the same (tests/test_activation_checkpointing.py).

PyTorch's non-reentrant checkpoint (``use_reentrant=False``) is asked for explicitly: the reentrant
one silently drops the gradients of a checkpointed layer whose inputs do not require grad, which is
what LoRA's frozen embeddings give. transformers' helper also hooks the input embeddings so their
output requires grad (``enable_input_require_grads``, what peft asks for with checkpointing).
"""

from __future__ import annotations

import torch

from tether.errors import ConfigError


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn checkpointing on in the outermost Hugging Face models inside ``model`` (the model
    itself, the base under a peft wrapper, the policy under PPO's value head)."""
    from transformers import PreTrainedModel

    outermost: dict[str, PreTrainedModel] = {}
    for name, module in model.named_modules():
        inside_another = any(name.startswith(f"{outer}.") or outer == "" for outer in outermost)
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing and not inside_another:
            outermost[name] = module
    if not outermost:
        raise ConfigError(f"train.gradient_checkpointing: {type(model).__name__} holds no Hugging Face "
                          "model that supports gradient checkpointing")
    for module in outermost.values():
        # transformers 5 renamed the method; the old name still works there, with a FutureWarning
        enable = getattr(module, "activation_checkpointing_enable", None) or module.gradient_checkpointing_enable
        enable({"use_reentrant": False})
