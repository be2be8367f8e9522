"""What a weight push to the in-process vLLM engine costs: full weights vs LoRA merged.

    .venv-vllm/bin/python benchmarks/vllm_weight_push.py --repeats 5

For the default model with LoRA (r=16, all linear layers, as the GRPO benchmark), times
``VLLMSampler.push_weights`` two ways, interleaved, best of ``--repeats``:

    full weights     every tensor, LoRA merged in (what a full fine-tune pushes)
    adapted layers   only the layers that carry adapters, merged, with their fused partners
                     (what the sampler pushes for a LoRA policy; no tied-head re-pack needed
                     when the embedding is not trained)
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["float32", "bf16"], default="float32")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model

    from tether.models import load_model
    from tether.rollout.backends import RolloutSettings, make_sampler

    model, tokenizer = load_model("default")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():  # a trained-looking adapter, so the merge is not a no-op
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=1e-3)
    sampler = make_sampler(model, tokenizer, RolloutSettings(backend="vllm"), bf16=args.precision == "bf16")
    runs = {"full weights": lambda: sampler.push_weights(only_adapted=False),
            "adapted layers": lambda: sampler.push_weights(only_adapted=True)}
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            began = time.perf_counter()
            run()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - began)
    from tether.rollout.vllm_engine import policy_weights

    for name, only in (("full weights", False), ("adapted layers", True)):
        count = sum(t.numel() for _, t in policy_weights(model, only_adapted=only))
        print(f"{name:>15}: {count / 1e6:6.1f} M parameters, best {best[name]:.3f} s")
    sampler.close()


if __name__ == "__main__":
    main()
