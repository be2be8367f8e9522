"""Model FLOPs of a training step and the machine's matmul peak: what MFU is made of.

``benchmarks/mfu.py`` and every training run's throughput line (``engine/throughput.py``) count
with these formulas. Only matmuls are counted; norms, softmax and the optimizer are not.

Linear layers. A weight W (d_out x d_in) costs 2 d_in d_out FLOPs per token forward. Backward
costs 2 d_in d_out for the input gradient plus 2 d_in d_out for the weight gradient, the latter
only when W trains. So per token, with N_t trainable and N_f frozen matmul parameters:
    training    6 N_t + 4 N_f         (full fine-tune: the usual 6 N; LoRA: ~4 N + 6 N_lora)
    forward     2 (N_t + N_f)          (generation, reference passes)
The trunk (decoder layers) runs on every real token; the lm_head (V x d, tied or not) only on
positions whose logits are computed (tether skips the prompt's logits where it can). Padding is
not counted: the numbers are useful work.

Attention. Per layer, a query attending to one key costs 2 d (q.k) + 2 d (weights x v) FLOPs; a
causal sequence of T tokens has T (T + 1) / 2 such pairs, so per layer and sequence
    forward 4 d T (T + 1) / 2,   training 3x that
(PaLM's 12 L d T per token counts the full T x T square; the causal half is what a causal kernel
must compute). In decoding, generated token j of a row whose prompt has p tokens attends to p + j keys.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class ModelShape:
    trunk_trainable: int  # matmul parameters in the decoder layers
    trunk_frozen: int
    head_trainable: int  # lm_head
    head_frozen: int
    layers: int
    hidden: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelShape:
        counts = {"trunk_trainable": 0, "trunk_frozen": 0, "head_trainable": 0, "head_frozen": 0}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                part = "head" if name.endswith("lm_head") else "trunk"
                kind = "trainable" if module.weight.requires_grad else "frozen"
                counts[f"{part}_{kind}"] += module.weight.numel()
        config = _hf_config(model)
        return cls(**counts, layers=config.num_hidden_layers, hidden=config.hidden_size)


def _hf_config(model: torch.nn.Module):
    for module in model.modules():  # the model itself, or the one inside a peft / value-head wrapper
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            return config
    raise ValueError(f"{type(model).__name__} holds no model with a Hugging Face config")


def linear_flops(trainable: int, frozen: int, tokens: int, training: bool) -> int:
    per_token = 6 * trainable + 4 * frozen if training else 2 * (trainable + frozen)
    return per_token * tokens


def attention_flops(shape: ModelShape, pairs: int, training: bool) -> int:
    """``pairs``: query-key pairs summed over sequences (T (T + 1) / 2 for a causal sequence)."""
    return (3 if training else 1) * 4 * shape.hidden * shape.layers * pairs


def step_flops(shape: ModelShape, trunk_tokens: int, head_positions: int, pairs: int, training: bool) -> int:
    return (linear_flops(shape.trunk_trainable, shape.trunk_frozen, trunk_tokens, training)
            + linear_flops(shape.head_trainable, shape.head_frozen, head_positions, training)
            + attention_flops(shape, pairs, training))


def causal_pairs(lengths: list[int]) -> int:
    return sum(t * (t + 1) // 2 for t in lengths)


def shared_prompt_flops(shape: ModelShape, prompts: list[int], rows: list[tuple[int, int]], training: bool) -> int:
    """Each prompt once (lm_head at its last token only), then every completion on top of its
    prompt's cache (lm_head at each completion token): DPO's pair rows, GRPO's scoring pass.

    ``prompts``: distinct prompt lengths; ``rows``: (prompt length, completion length) per completion."""
    completion_tokens = sum(g for _, g in rows)
    pairs = causal_pairs(prompts) + sum(p * g + g * (g + 1) // 2 for p, g in rows)
    return step_flops(shape, sum(prompts) + completion_tokens, len(prompts) + completion_tokens, pairs, training)


def rollout_flops(shape: ModelShape, prompt_lengths: list[int], completion_lengths: list[int], group: int) -> int:
    """Sampling ``group`` completions of each prompt: the prompt prefilled once (lm_head at its last
    token only), then one forward per generated token, token j of a row attending to p + j keys.

    ``prompt_lengths``, ``completion_lengths``: per row, the ``group`` rows of a prompt adjacent (as
    the samplers return them)."""
    prompts = prompt_lengths[::group]
    generated = sum(completion_lengths)
    decode_pairs = sum(p * g + g * (g + 1) // 2 for p, g in zip(prompt_lengths, completion_lengths))
    return (step_flops(shape, sum(prompts), len(prompts), causal_pairs(prompts), training=False)
            + step_flops(shape, generated, generated, decode_pairs, training=False))


def rl_update_flops(shape: ModelShape, prompt_lengths: list[int], completion_lengths: list[int], group: int,
                    updates: int = 1, trained: list[int] | None = None) -> int:
    """``updates`` teacher-forced training passes over the rollout's ``trained`` rows (default all;
    dynamic sampling drops groups with equal rewards): each of their prompts once, the completions
    on top (``shared_prompt_flops``). Reference and value passes are not counted (useful work only)."""
    trained = range(len(prompt_lengths)) if trained is None else trained
    rows = [(prompt_lengths[i], completion_lengths[i]) for i in trained]
    prompts = [prompt_lengths[p * group] for p in sorted({i // group for i in trained})]
    return updates * shared_prompt_flops(shape, prompts, rows, training=True) if rows else 0


# ---- the peak ------------------------------------------------------------------------------------

def matmul_peak(dtype: torch.dtype, n: int, repeats: int, device: str = "cpu") -> float:
    """Best FLOP/s of an (n x n) @ (n x n) matmul in ``dtype``: 2 n^3 FLOPs each."""
    # A generator of its own: measuring must not move the run's random stream (resume, 1 vs N ranks).
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=device, generator=generator).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, packing buffers
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine_name(device: str = "cpu") -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_cache_path() -> Path:
    from tether.models.default_model import tether_home

    return tether_home() / "matmul_peaks.json"


_measured_here: dict[str, float] = {}  # this process's own measurement, per machine/threads/dtype


def cached_peak(dtype: torch.dtype, device: str = "cpu", cache: Path | None = None) -> float:
    """The matmul peak of ``dtype`` on this machine and thread count: the best ever measured here, kept
    in ``$TETHER_HOME/matmul_peaks.json``. Each process measures once (a 1024^3 matmul, best of 5, well
    under a second) and keeps the larger of that and the file's.

    A peak measured while other jobs share the cores is low, which makes MFU read high; keeping the
    best one means a single quiet run sets it right for every later run. ``benchmarks/mfu.py``
    measures its own larger peak each time."""
    cache = cache or peak_cache_path()
    key = f"{machine_name(device)} | {device} | {torch.get_num_threads()} threads | {str(dtype).removeprefix('torch.')}"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in _measured_here:
        _measured_here[key] = matmul_peak(dtype, 1024, 5, device)
    best = max(known.get(key, 0.0), _measured_here[key])
    if known.get(key) != best:
        known[key] = best
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known, indent=1) + "\n")
        except OSError:
            pass  # a read-only home: this process's measurement still counts
    return best
