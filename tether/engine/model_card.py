"""``final/README.md``: a model card written from the run itself (base, method, data, metrics).

peft writes an empty template there; this replaces it with what a reader of the folder needs to
know, all taken from the resolved config and ``metrics.jsonl`` of the run that made the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tether.engine.metrics import read_metrics
from tether.models.default_model import HUB_ID, is_default_name

# Bookkeeping columns of metrics.jsonl: not a result of training.
_NOT_RESULTS = {"step", "time", "lr", "items_per_s"}


def model_card(config, algorithm: str, model) -> str:
    """Markdown with a Hub-style YAML header, for ``model`` as trained by the run of ``config``
    (``algorithm``: "sft", "dpo", ...)."""
    from tether.models.loading import portable_base_name

    adapter = hasattr(model, "peft_config")
    base_model = portable_base_name(model) if adapter else _portable(config.model.path)
    run_dir = config.run_dir()
    metrics = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    header = {"base_model": base_model, "library_name": "peft" if adapter else "transformers",
              "tags": ["tether", algorithm.lower()] + (["lora"] if adapter else [])}
    lines = ["---", *(f"{key}: {json.dumps(value)}" for key, value in header.items()), "---", "",
             f"# {config.train.run_name}", "",
             f"Trained with tether `{algorithm.lower()}` from `{config.model.path}`{_merge_note(config)}.", "",
             "| | |", "|---|---|",
             f"| base model | `{base_model}` |",
             f"| method | {algorithm.upper()}, {_method(config, model, adapter)} |",
             f"| training data | `{config.data.train}` |"]
    if config.data.eval:
        lines.append(f"| held-out data | `{config.data.eval}` |")
    steps = metrics[-1]["step"] if metrics else 0
    train = config.train
    lines += [f"| optimizer steps | {steps} (batch {train.batch_size} x {train.grad_accum} accumulated) |",
              f"| learning rate | {config.optim.lr:g} ({config.optim.schedule}) |",
              f"| precision | {'bf16 autocast' if train.bf16 else 'float32'} |",
              f"| seed | {train.seed} |", ""]
    lines += _metrics_table(metrics)
    lines += ["## Loading", "", "```python"]
    if adapter:
        lines += ["from tether.models import load_model", "model, tokenizer = load_model(\"final\")",
                  "# or, without tether (the base must be reachable as named above):",
                  "from peft import AutoPeftModelForCausalLM",
                  "model = AutoPeftModelForCausalLM.from_pretrained(\"final\")"]
    else:
        auto = "AutoModelForSequenceClassification" if algorithm == "reward" else "AutoModelForCausalLM"
        lines += [f"from transformers import {auto}", f"model = {auto}.from_pretrained(\"final\")"]
    lines += ["```", "", f"The full configuration is in `{run_dir / 'config.yaml'}`; every logged "
              f"step is in `{run_dir / 'metrics.jsonl'}`.", ""]
    if adapter and base_model == HUB_ID:
        lines += ["The adapters were trained on tether's bundled SmolLM2-135M-Instruct (a Q4_1 "
                  "quantization, dequantized); on the original weights from the Hub they behave "
                  "nearly, not exactly, the same.", ""]
    return "\n".join(lines)


def _merge_note(config) -> str:
    """When the run began by merging an earlier adapter into its base (common.load_policy)."""
    from tether.models.loading import adapter_base_name, is_adapter_dir, resolve_model_path

    model = config.model
    if model.lora is None or model.lora_on_adapter != "merge" or not is_adapter_dir(model.path):
        return ""
    return (f", a LoRA adapter on `{adapter_base_name(resolve_model_path(model.path))}` that was "
            "merged into that base first; the merged model is the base model below")


def _portable(name: str) -> str:
    if is_default_name(name):
        return HUB_ID
    return str(Path(name).expanduser().resolve()) if Path(name).expanduser().is_dir() else name


def _method(config, model, adapter: bool) -> str:
    """LoRA's settings as the saved adapter has them (a continued adapter keeps its own)."""
    from tether.models.loading import is_adapter_dir

    settings = config.model
    if not adapter:
        return ("full fine-tuning" if settings.lora is None
                else f"LoRA r={settings.lora.r}, alpha={settings.lora.alpha} (merged into the weights)")
    lora = next(iter(model.peft_config.values()))
    targets = lora.target_modules
    # peft spells out "all-linear" as every module's full name: q_proj is enough.
    targets = targets if isinstance(targets, str) else ", ".join(sorted({t.rsplit(".", 1)[-1] for t in targets}))
    method = f"LoRA r={lora.r}, alpha={lora.lora_alpha}, dropout={lora.lora_dropout:g}, targets {targets}"
    if is_adapter_dir(settings.path) and (settings.lora is None or settings.lora_on_adapter == "continue"):
        method += f"; the adapter of `{settings.path}`, trained further"
    return method


def _metrics_table(metrics: list[dict]) -> list[str]:
    """First and last logged value of every training and held-out metric."""
    if not metrics:
        return []
    names = sorted({key for row in metrics for key, value in row.items()
                    if key not in _NOT_RESULTS and isinstance(value, (int, float))})
    lines = ["## Metrics", "", "| metric | first logged | last logged |", "|---|---|---|"]
    for name in names:
        logged = [(row["step"], row[name]) for row in metrics
                  if isinstance(row.get(name), (int, float)) and math.isfinite(row[name])]
        if logged:
            (first_step, first), (last_step, last) = logged[0], logged[-1]
            lines.append(f"| {name} | {first:.4g} (step {first_step}) | {last:.4g} (step {last_step}) |")
    return lines + [""]
