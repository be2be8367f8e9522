"""Rollout throughput: tether's sampler vs Hugging Face ``generate``, same model, same prompts.

Both sample N completions per prompt (temperature, top-p, max new tokens equal) one after the
other in one process, after a short warm-up of each. Throughput counts generated tokens only:
each completion's tokens through its first EOS / end-of-turn token (or max_new_tokens), so
padding fed to finished rows is cost, not output.

    python benchmarks/rollout_vs_hf.py --model tiny
    python benchmarks/rollout_vs_hf.py --model default --prompts 4 --n 8 --max-new-tokens 64
    python benchmarks/rollout_vs_hf.py --model default --compare-compact   # is compaction worth it?
    python benchmarks/rollout_vs_hf.py --model default --vllm --engines vllm --precision bf16
    python benchmarks/rollout_vs_hf.py --model default --engines tether,hf --precision bf16

``--vllm`` adds tether's vLLM backend (``rollout.backend: vllm``; in-process, eager, both cores
bound), started once before the timed runs; ``--precision bf16`` runs HF and tether under bf16
autocast and vLLM in bfloat16.

HF's ``num_return_sequences=N`` copies every prompt N times before prefill; tether prefills each
prompt once and copies its KV cache, and can drop finished rows from the batch.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from tether.data import encode_prompt
from tether.rollout.sampler import RolloutConfig, sample
from tether.rollout.stopping import end_token_ids

PROMPTS = [
    "What is 12 plus 7?",
    "Write a haiku about the sea.",
    "Give me three tips for learning to cook.",
    "Explain what a prime number is in one sentence.",
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "Name a mammal that can fly.",
    "Why is the sky blue?",
]


def load(name: str):
    if name == "tiny":
        from tether.models.tiny import tiny_llama

        model, tokenizer = tiny_llama(seed=0)
        return model.eval(), tokenizer
    from tether.models import load_model

    return load_model("default")


def hf_generate(model, tokenizer, prompts: list[str], config: RolloutConfig, end_ids: set[int]) -> int:
    """Sample with ``model.generate``; return the number of generated tokens (through EOS)."""
    encoded = [encode_prompt(prompt, tokenizer) for prompt in prompts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
    torch.manual_seed(config.seed or 0)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, do_sample=True,
            temperature=config.temperature, top_p=config.top_p, top_k=0,  # 0: no top-k (None means 50)
            num_return_sequences=config.num_samples, max_new_tokens=config.max_new_tokens,
            pad_token_id=pad, eos_token_id=sorted(end_ids))
    completions = output[:, width:]  # (P*N, L)
    ended = torch.isin(completions, torch.tensor(sorted(end_ids)))  # (P*N, L)
    # tokens through the first end token; rows that never ended count all L
    first_end = torch.where(ended.any(1), ended.float().argmax(1) + 1, completions.shape[1])
    return int(first_end.sum())


def tether_sample(model, tokenizer, prompts: list[str], config: RolloutConfig) -> int:
    return int(sample(model, tokenizer, prompts, config).completion_mask.sum())


def timed(run) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = run()
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--prompts", type=int, default=4, help="number of prompts (up to 8 distinct)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each contender this many times, interleaved; report the fastest")
    parser.add_argument("--precision", choices=["float32", "bf16"], default="float32")
    parser.add_argument("--vllm", action="store_true", help="also time the vLLM backend")
    parser.add_argument("--engines", default="tether,hf,vllm",
                        help="which of tether, hf, vllm to time (vllm only with --vllm); one process each "
                             "keeps vLLM's in-process thread settings away from the others")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="vLLM's KV cache")
    parser.add_argument("--compare-compact", action="store_true",
                        help="also time tether without dropping finished rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load(args.model)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    config = RolloutConfig(num_samples=args.n, temperature=args.temperature, top_p=args.top_p,
                           max_new_tokens=args.max_new_tokens, seed=args.seed)
    end_ids = end_token_ids(tokenizer, model)

    bf16 = args.precision == "bf16"

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    engine = None
    if args.vllm:
        from tether.rollout.backends import RolloutSettings, make_sampler

        start = time.perf_counter()
        engine = make_sampler(model, tokenizer, RolloutSettings(backend="vllm", kv_cache_gib=args.kv_cache_gib),
                              bf16=bf16)
        print(f"vLLM engine started in {time.perf_counter() - start:.1f} s")

    warm = config.model_copy(update={"num_samples": 2, "max_new_tokens": 4})
    with autocast():
        if "tether" in args.engines:
            tether_sample(model, tokenizer, prompts[:2], warm)
        if "hf" in args.engines:
            hf_generate(model, tokenizer, prompts[:2], warm, end_ids)
    if engine is not None:
        engine.sample(prompts[:2], warm)

    print(f"model={args.model} prompts={args.prompts} n={args.n} max_new_tokens={args.max_new_tokens} "
          f"temperature={args.temperature} top_p={args.top_p} threads={torch.get_num_threads()} "
          f"precision={args.precision}", flush=True)

    def under_autocast(run):
        def wrapped():
            with autocast():
                return run()
        return wrapped

    wanted = set(args.engines.split(","))
    runs = {}
    if "tether" in wanted:
        runs["tether"] = under_autocast(lambda: tether_sample(model, tokenizer, prompts, config))
    if "hf" in wanted:
        runs["hf generate"] = under_autocast(lambda: hf_generate(model, tokenizer, prompts, config, end_ids))
    if engine is not None and "vllm" in wanted:
        runs["tether vllm"] = lambda: int(engine.sample(prompts, config).completion_mask.sum())
    if args.compare_compact:
        padded = config.model_copy(update={"compact": False})
        runs["tether (no compact)"] = under_autocast(lambda: tether_sample(model, tokenizer, prompts, padded))
    best: dict[str, tuple[int, float]] = {}
    for _ in range(args.repeats):  # interleaved, so a burst of load on a shared machine hits all
        for name, run in runs.items():
            tokens, seconds = timed(run)
            print(f"  ran {name}: {tokens} tokens in {seconds:.2f} s", flush=True)
            if name not in best or seconds < best[name][1]:
                best[name] = (tokens, seconds)
    speeds = {}
    for name, (tokens, seconds) in best.items():
        speeds[name] = tokens / seconds
        print(f"{name:>20}: {tokens:6d} tokens in {seconds:7.2f} s = {speeds[name]:8.1f} tokens/s")
    for a, b in (("tether", "hf generate"), ("tether vllm", "hf generate"), ("tether vllm", "tether")):
        if a in speeds and b in speeds:
            print(f"{a + ' / ' + b:>20}: {speeds[a] / speeds[b]:.2f}x")
    if args.compare_compact and "tether" in speeds:
        print(f"{'compact / no compact':>20}: {speeds['tether'] / speeds['tether (no compact)']:.2f}x")


if __name__ == "__main__":
    main()
