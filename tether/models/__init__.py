"""Models: local checkpoints, the bundled SmolLM2 default, tiny test models, LoRA adapters."""

from __future__ import annotations

import os

# tether never downloads weights. Loaders pass local_files_only=True and refuse non-local names
# before transformers sees them; this also puts huggingface_hub itself in offline mode when it
# has not been imported yet. An explicit HF_HUB_OFFLINE=0 from the user is respected.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tether.models.default_model import (  # noqa: E402
    INSTALL_COMMAND,
    default_model_cache_dir,
    default_model_dir,
    tether_home,
)
from tether.models.loading import load_model, load_tokenizer, prepare_tokenizer, save_model  # noqa: E402
from tether.models.lora import apply_lora, merge_lora, reference_mode  # noqa: E402
from tether.models.modes import evaluation_mode  # noqa: E402

__all__ = [
    "INSTALL_COMMAND",
    "apply_lora",
    "default_model_cache_dir",
    "default_model_dir",
    "evaluation_mode",
    "load_model",
    "load_tokenizer",
    "merge_lora",
    "prepare_tokenizer",
    "reference_mode",
    "save_model",
    "tether_home",
]
