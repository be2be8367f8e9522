"""Load and save causal language models from local paths only. tether never downloads.

A model name is one of:
  - ``"default"`` (or ``"smollm2"``, ``"SmolLM2-135M-Instruct"``): the bundled default model;
  - a local Hugging Face checkpoint directory (``config.json`` + safetensors + tokenizer);
  - a local directory holding a PEFT/LoRA adapter (``adapter_config.json``): the base model it
    names is loaded first, then the adapter is applied.

Anything else (a Hub id like ``meta-llama/Llama-3.2-1B``, a missing path) raises
``ModelNotFoundError`` before ``transformers`` is asked, so no code path can reach the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from transformers.utils import logging as hf_logging

from tether.errors import ModelNotFoundError, TetherError
from tether.models.default_model import (
    DEFAULT_ALIASES,
    HUB_ID,
    default_model_cache_dir,
    default_model_dir,
    is_default_name,
)

ADAPTER_NOTE_FILE = "tether_adapter.json"
# "org/name" with Hub-legal characters: what a user copies from a model page.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(name_or_path: str | os.PathLike = "default", *, dtype: torch.dtype = torch.float32
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from the bundled default model or a local directory.

    The model is returned in eval mode (call ``.train()`` to train) in ``dtype``. The tokenizer
    always has a pad token and pads on the right (see ``prepare_tokenizer``).
    A LoRA adapter directory returns a ``peft.PeftModel`` with trainable adapter weights, so
    training can continue from it; wrap inference in ``torch.no_grad()`` as usual.

    Raises:
        ModelNotFoundError: the name is not ``"default"`` and not a local checkpoint directory.
    """
    hf_logging.disable_progress_bar()  # tether draws its own bars; per-file loading bars are noise
    path = resolve_model_path(str(name_or_path))
    if (path / "adapter_config.json").is_file():
        return _load_adapter(path, dtype)
    _require_config(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
    _sync_generation_config(model, tokenizer)
    return model.eval(), tokenizer


def load_tokenizer(name_or_path: str | os.PathLike = "default") -> PreTrainedTokenizerBase:
    """The tokenizer ``load_model`` returns, without loading any weights: cheap, so trainers can
    tokenize and check their data before the model loads. Raises ``ModelNotFoundError`` as
    ``load_model`` does."""
    path = resolve_model_path(str(name_or_path))
    if (path / "adapter_config.json").is_file():
        if not (path / "tokenizer_config.json").is_file():  # as _load_adapter: the base's tokenizer
            path = resolve_model_path(adapter_base_name(path))
    else:
        _require_config(path)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token and right padding, as training batches expect.

    Modifies and returns ``tokenizer``.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TetherError(
                f"tokenizer {tokenizer.name_or_path!r} has neither a pad token nor an eos token; "
                "set tokenizer.pad_token before training."
            )
        # Many causal LMs ship without a pad token. Padded positions are excluded by the
        # attention mask and the loss mask, so the id that fills them never enters a gradient;
        # eos is always in the vocabulary, and reusing it avoids adding a token, which would
        # resize the embedding matrix and change the model. Code must therefore find padding
        # through attention_mask, never by comparing ids to pad_token_id.
        tokenizer.pad_token = tokenizer.eos_token
    # Right padding keeps every sequence starting at position 0, so position ids and the
    # one-token label shift line up across the batch. Batched generation pads left itself.
    tokenizer.padding_side = "right"
    return tokenizer


def save_model(model, tokenizer, directory: str | os.PathLike, *, card: str | None = None) -> Path:
    """Save a model (safetensors) and its tokenizer so that ``load_model(directory)`` reloads it.

    A ``PeftModel`` saves only its adapter, plus ``tether_adapter.json`` naming the base model
    to load it onto ("default" when the base is the bundled model, so the adapter stays portable
    across machines with different caches). ``adapter_config.json`` names the base the way peft
    and transformers load it: the default model by its Hub id, a local base by its absolute path.
    Use ``merge_lora`` first for a standalone model. ``card`` (markdown) becomes ``README.md``,
    replacing peft's empty template.

    Atomic: everything is written to a temporary directory beside ``directory`` and renamed into
    place, so a crash leaves either the previous contents or the new ones, never a mix. An
    existing ``directory`` is replaced.
    """
    directory = Path(directory).expanduser().resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which is private 0700) so checkpoints get the user's usual permissions.
    build = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    build.mkdir()
    try:
        model.save_pretrained(build)  # PeftModel: adapter_config.json + adapter_model.safetensors
        tokenizer.save_pretrained(build)
        if _is_peft(model):
            base = _base_model_name(model)
            # Written after saving: given a Hub id, peft's save would look the base up online.
            _set_json_field(build / "adapter_config.json", "base_model_name_or_path", _peft_base_name(base))
            note = {"base_model": base, **_relative_base(base, directory)}
            (build / ADAPTER_NOTE_FILE).write_text(json.dumps(note, indent=2) + "\n")
        if card is not None:
            (build / "README.md").write_text(card, encoding="utf-8")
        _replace_dir(build, directory)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return directory


def resolve_model_path(name: str) -> Path:
    """A model name -> an existing local directory, or ModelNotFoundError."""
    if is_default_name(name):
        return default_model_dir()
    path = Path(name).expanduser()
    if path.is_dir():
        _require_weights(path)
        return path
    raise ModelNotFoundError(_not_found_message(name, path))


# What from_pretrained reads, one file or a shard index (TensorFlow / Flax weights it cannot load).
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)


def _require_weights(path: Path) -> None:
    """A folder with config.json but no weight file (a half-finished copy or download) would
    otherwise fail deep inside transformers with an OSError traceback."""
    if not (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        present = sorted(child.name for child in path.iterdir())
        shown = ", ".join(present[:10]) + (", ..." if len(present) > 10 else "")
        raise ModelNotFoundError(
            f"{path} has config.json but no model weights ({' or '.join(WEIGHT_FILES)}); it holds "
            f"only: {shown}. Copy the weight files into it, or pass the folder that has them.")


def _require_config(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path} is a directory but not a model checkpoint: it has neither config.json "
            "(a Hugging Face model) nor adapter_config.json (a PEFT/LoRA adapter)."
        )


def _not_found_message(name: str, path: Path) -> str:
    aliases = ", ".join(f"'{alias}'" for alias in sorted(DEFAULT_ALIASES))
    instead = (f"Pass a local checkpoint directory (config.json + *.safetensors + tokenizer "
               f"files, e.g. one written by tether.models.save_model), or one of {aliases} for the "
               "bundled SmolLM2-135M-Instruct.")
    if path.exists():
        return f"Model path {name!r} is a file, not a checkpoint directory. {instead}"
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        return (f"Model {name!r} is not a local directory, and it looks like a Hugging Face Hub "
                "id. tether has no network access and never downloads models. Download it "
                "elsewhere and copy the folder here, then pass that path. " + instead)
    resolved = "" if path.is_absolute() else f" (resolved to {path.absolute()})"
    return (f"Model path {name!r} does not exist{resolved}. tether has no network access, so "
            "it only loads local directories. " + instead)


def _load_adapter(path: Path, dtype: torch.dtype):
    from peft import PeftModel

    base_name = adapter_base_name(path)
    try:
        base_path = resolve_model_path(base_name)
        if (base_path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"{base_path} is itself an adapter; merge it first "
                                     "(merge_lora, then save_model) to use it as a base.")
        _require_config(base_path)
    except ModelNotFoundError as error:
        raise ModelNotFoundError(
            f"LoRA adapter {path} was trained on base model {base_name!r}, which cannot be "
            f"loaded: {error}"
        ) from None
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, local_files_only=True)
    # The adapter directory holds the tokenizer it was trained with (save_model writes it);
    # adapters saved by other tools often do not, so fall back to the base's.
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path if has_tokenizer else base_path,
                                              local_files_only=True)
    tokenizer = prepare_tokenizer(tokenizer)
    _sync_generation_config(base, tokenizer)
    model = PeftModel.from_pretrained(base, path, is_trainable=True, local_files_only=True)
    return model.eval(), tokenizer


def _set_json_field(path: Path, key: str, value) -> None:
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _relative_base(base: str, directory: Path) -> dict:
    """A base beside the adapter (a run's merged_base/ next to its final/) is also noted relative
    to it, so the adapter still loads after the folder holding both is moved or copied."""
    if not Path(base).is_absolute() or not Path(base).is_relative_to(directory.parent):
        return {}
    return {"base_model_relative": os.path.relpath(base, directory)}


def adapter_base_name(path: Path) -> str:
    """The base model an adapter directory was trained on, as load_model resolves it."""
    note = path / ADAPTER_NOTE_FILE
    if note.is_file():
        noted = json.loads(note.read_text())
        relative = noted.get("base_model_relative")
        if relative and not Path(noted["base_model"]).is_dir() and (path / relative).is_dir():
            return str((path / relative).resolve())
        return noted["base_model"]
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"LoRA adapter {path} does not name its base model "
                                 "(adapter_config.json has no base_model_name_or_path).")
    # An adapter made elsewhere (TRL, or a tether adapter without its note) on SmolLM2's Hub id
    # goes onto the bundled copy of that model, since tether never downloads.
    return "default" if base == HUB_ID else base


def _base_model_name(model) -> str:
    """How a saved adapter should name its base: "default" for the bundled model, else its path."""
    base = model.get_base_model().name_or_path
    if base and Path(base).expanduser().resolve() == default_model_cache_dir().resolve():
        return "default"
    if not base or not Path(base).is_dir():
        # A model built in memory (tests, from_config) has no path to reload it from; the
        # adapter is still saved, and load_model will report the missing base clearly.
        return base or "<unsaved base model>"
    return str(Path(base).resolve())


def is_adapter_dir(name_or_path: str | os.PathLike) -> bool:
    """True when the model name is a local PEFT/LoRA adapter directory (no model is loaded)."""
    try:
        return (resolve_model_path(str(name_or_path)) / "adapter_config.json").is_file()
    except ModelNotFoundError:
        return False


def portable_base_name(model) -> str | None:
    """How a saved adapter of ``model`` (a PeftModel) names its base for peft and transformers:
    the default model by its Hub id, a local base by its absolute path (None: built in memory)."""
    return _peft_base_name(_base_model_name(model))


def _peft_base_name(base: str) -> str | None:
    if base == "default":
        return HUB_ID
    return base if Path(base).is_dir() else None


def _is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _sync_generation_config(model: PreTrainedModel, tokenizer) -> None:
    # generate() warns and guesses when pad_token_id is unset; use the tokenizer's.
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _replace_dir(build: Path, directory: Path) -> None:
    """Rename ``build`` to ``directory``; an existing ``directory`` is moved aside, then removed.

    POSIX rename cannot replace a non-empty directory, so replacing takes two renames; between
    them ``directory`` is briefly absent, but it is never partially written.
    """
    if not directory.exists():
        os.rename(build, directory)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
    os.rename(directory, old / directory.name)
    os.rename(build, directory)
    shutil.rmtree(old, ignore_errors=True)
