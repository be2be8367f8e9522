"""Model FLOPs utilization (MFU): achieved training FLOP/s as a fraction of this machine's peak.

    python benchmarks/mfu.py                                  # tether:default, sft/dpo/grpo, LoRA + full
    python benchmarks/mfu.py --model tiny --repeats 2         # a smoke run in seconds
    python benchmarks/mfu.py --json benchmarks/mfu.json

Peak: the best of ``--peak-repeats`` timings of an n x n x n matmul (2 n^3 FLOPs), in float32 and
in bfloat16, with the same thread count as the training steps. MFU divides by the peak of the
dtype the step computes in (float32 unless ``--bf16``).

Model FLOPs of one step: the formulas in ``tether/engine/flops.py`` (only matmuls; linear layers
6 N_t + 4 N_f per token in training, causal attention 3 x 4 d T (T + 1) / 2 per layer; padding not
counted), the same ones every training run's throughput line uses.

Steps, on ``--model`` (``tether:default`` is SmolLM2-135M-Instruct; ``tiny`` the test model):
    sft   one optimizer step on B sequences of T tokens (all completion), tether's SFT loss
    dpo   one step on B pairs (the prompt once, chosen + rejected on its cache), tether's ``dpo_step_loss``
          with precomputed reference log-probs (as ``train_dpo`` does)
    grpo  one step: sample G completions for each of P prompts (tether's sampler, KV cache shared),
          then one clipped update on all rows (``policy_loss``); reported whole and by phase
with LoRA (r=16, all-linear) and full fine-tuning. Each configuration runs one warm-up step and
then ``--repeats`` timed steps; the table gives the best (the machine is shared with other
jobs, so slower repeats measure the neighbours, not tether) and the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads hurt shared cores

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tether.algorithms.dpo import DPOConfig, collate_pairs, dpo_step_loss, pair_logps  # noqa: E402
from tether.algorithms.rl_step import completion_token_logps  # noqa: E402
from tether.config import OptimSettings, load_config  # noqa: E402
from tether.data import pad_batch  # noqa: E402
from tether.engine.flops import (  # noqa: E402
    ModelShape,
    causal_pairs,
    machine_name,
    matmul_peak,
    rl_update_flops,
    rollout_flops,
    shared_prompt_flops,
    step_flops,
)
from tether.engine.optim import build_optimizer  # noqa: E402
from tether.losses.grpo import group_advantages, policy_loss  # noqa: E402
from tether.losses.sft import sft_loss  # noqa: E402
from tether.models import apply_lora, load_model  # noqa: E402
from tether.rollout.sampler import RolloutConfig, TransformersSampler  # noqa: E402

TEXT = ("Alignment after pre-training teaches a model to follow instructions, to refuse what it should "
        "refuse, and to answer the rest helpfully; every step of it is measured before and after. ")


# ---- the steps ------------------------------------------------------------------------------

@dataclass
class Timing:
    seconds: float
    flops: int
    phases: dict[str, tuple[float, int]] = field(default_factory=dict)  # name -> (seconds, flops)


def optimizer_step(optimizer) -> None:
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def tokens_of(tokenizer, count: int, offset: int) -> list[int]:
    ids = tokenizer(TEXT * (1 + count // 20), add_special_tokens=False)["input_ids"]
    return ids[offset % 7:offset % 7 + count]


def sft_step_fn(model, tokenizer, shape: ModelShape, args):
    rows = [{"input_ids": tokens_of(tokenizer, args.seq_len, i), "labels": tokens_of(tokenizer, args.seq_len, i)}
            for i in range(args.batch_size)]
    batch = pad_batch(rows, tokenizer.pad_token_id)
    lengths = batch["attention_mask"].sum(1).tolist()
    flops = step_flops(shape, sum(lengths), sum(lengths), causal_pairs(lengths), training=True)

    def step(optimizer, autocast) -> Timing:
        start = time.perf_counter()
        with autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            loss, _ = sft_loss(logits, batch["labels"])
        loss.backward()
        optimizer_step(optimizer)
        return Timing(time.perf_counter() - start, flops)
    return step


def dpo_step_fn(model, tokenizer, shape: ModelShape, args):
    from tether.algorithms.dpo import PreferenceExamples

    prompt_len, answer_len = args.seq_len // 4, args.seq_len - args.seq_len // 4
    pairs = [{"prompt_ids": tokens_of(tokenizer, prompt_len, i), "chosen_ids": tokens_of(tokenizer, answer_len, i + 1),
              "rejected_ids": tokens_of(tokenizer, answer_len - 8, i + 2)} for i in range(args.batch_size)]
    examples = PreferenceExamples(pairs)
    batch = collate_pairs(examples, list(range(len(pairs))), tokenizer.pad_token_id)
    with torch.no_grad():  # reference log-probs: once before training, as train_dpo does
        chosen, rejected = pair_logps(model, batch, average=False)
    batch["ref_chosen"], batch["ref_rejected"] = chosen, rejected
    config = load_config(DPOConfig, None, ["data.train=unused.jsonl"])
    prompts = batch["prompt_mask"].sum(1).tolist()  # (B,)
    answers = batch["completion_mask"].sum(1).tolist()  # (2B,) chosen rows, then rejected rows
    flops = shared_prompt_flops(shape, prompts, list(zip(prompts + prompts, answers)), training=True)

    def step(optimizer, autocast) -> Timing:
        start = time.perf_counter()
        with autocast():
            loss, _ = dpo_step_loss(model, batch, config)
        loss.backward()
        optimizer_step(optimizer)
        return Timing(time.perf_counter() - start, flops)
    return step


def grpo_step_fn(model, tokenizer, shape: ModelShape, args):
    prompts = [[{"role": "user", "content": f"Question {i}: what is {i + 3} times {i + 4}? Think, then answer."}]
               for i in range(args.prompts)]
    sampler = TransformersSampler(model, tokenizer)
    calls = {"n": 0}

    def step(optimizer, autocast) -> Timing:
        calls["n"] += 1
        start = time.perf_counter()
        with torch.no_grad(), autocast():
            rollout = sampler.sample(prompts, RolloutConfig(num_samples=args.generations, temperature=1.0,
                                                            max_new_tokens=args.new_tokens, seed=calls["n"]))
        sampled = time.perf_counter()
        rewards = torch.tensor([float(len(text) % 5) for text in rollout.texts])  # any varied reward
        advantages = group_advantages(rewards, args.generations)
        mask = rollout.completion_mask.bool()  # (P*G, L)
        with autocast():
            logps = completion_token_logps(model, rollout)  # (P*G, L)
            loss, _ = policy_loss(logps, rollout.model_logps, advantages, mask, loss_type="grpo")
        loss.backward()
        optimizer_step(optimizer)
        end = time.perf_counter()

        prompt_lengths = rollout.prompt_mask.sum(1).tolist()  # (P*G,) each prompt repeated G times
        completion_lengths = rollout.completion_mask.sum(1).tolist()
        sampling = rollout_flops(shape, prompt_lengths, completion_lengths, args.generations)
        update = rl_update_flops(shape, prompt_lengths, completion_lengths, args.generations)
        return Timing(end - start, sampling + update,
                      {"rollout": (sampled - start, sampling), "update": (end - sampled, update)})
    return step


STEPS = {"sft": sft_step_fn, "dpo": dpo_step_fn, "grpo": grpo_step_fn}


# ---- driver ------------------------------------------------------------------------------------

@dataclass
class Row:
    algo: str
    mode: str
    trainable_params: int
    matmul_params: int
    gflop_per_step: float
    best_s: float
    median_s: float
    best_gflops: float
    mfu: float
    phases: dict[str, dict[str, float]]


def measure(algo: str, mode: str, args, peak: float) -> Row:
    model, tokenizer = load_model("default" if args.model == "default" else args.model_path)
    if mode == "lora":
        model = apply_lora(model, r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    model.train()
    shape = ModelShape.of(model)
    optimizer = build_optimizer(model, OptimSettings(lr=1e-6))
    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    step = STEPS[algo](model, tokenizer, shape, args)
    step(optimizer, autocast)  # warm-up
    timings = [step(optimizer, autocast) for _ in range(args.repeats)]
    best = max(timings, key=lambda t: t.flops / t.seconds)
    phases = {name: {"best_s": min(t.phases[name][0] for t in timings),
                     "gflops": max(t.phases[name][1] / t.phases[name][0] for t in timings) / 1e9,
                     "mfu": max(t.phases[name][1] / t.phases[name][0] for t in timings) / peak}
              for name in best.phases}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = shape.trunk_trainable + shape.trunk_frozen + shape.head_trainable + shape.head_frozen
    return Row(algo, mode, trainable, total,
               best.flops / 1e9, best.seconds, statistics.median(t.seconds for t in timings),
               best.flops / best.seconds / 1e9, best.flops / best.seconds / peak, phases)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["default", "tiny"], default="default")
    parser.add_argument("--algos", default="sft,dpo,grpo")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (best is reported)")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences (SFT) or pairs (DPO) per step")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=2, help="GRPO prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=32, help="GRPO max new tokens")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast; MFU against the bf16 peak")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.model == "tiny":
        import tempfile

        from tether.models.tiny import save_tiny_llama

        args.model_path = save_tiny_llama(Path(tempfile.mkdtemp()) / "tiny")
    peaks = {"float32": matmul_peak(torch.float32, args.peak_size, args.peak_repeats),
             "bfloat16": matmul_peak(torch.bfloat16, args.peak_size, args.peak_repeats)}
    peak = peaks["bfloat16" if args.bf16 else "float32"]
    print(f"machine: {machine_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{args.threads} threads, cuda: {torch.cuda.is_available()}")
    print(f"matmul peak ({args.peak_size}^3, best of {args.peak_repeats}): float32 {peaks['float32'] / 1e9:.1f} "
          f"GFLOP/s, bfloat16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s; MFU against "
          f"{'bfloat16' if args.bf16 else 'float32'}")

    rows = []
    for algo in args.algos.split(","):
        for mode in args.modes.split(","):
            row = measure(algo, mode, args, peak)
            rows.append(row)
            print(f"  done {algo}/{mode}: {row.best_s:.2f} s/step", flush=True)

    header = (f"{'step':<6}{'mode':<6}{'trainable':>11}{'GFLOP/step':>12}{'best s':>9}{'median s':>10}"
              f"{'GFLOP/s':>9}{'MFU':>7}")
    print(header)
    for row in rows:
        print(f"{row.algo:<6}{row.mode:<6}{row.trainable_params / 1e6:>10.2f}M{row.gflop_per_step:>12.1f}"
              f"{row.best_s:>9.2f}{row.median_s:>10.2f}{row.best_gflops:>9.1f}{row.mfu:>7.1%}")
        for name, phase in row.phases.items():
            print(f"{'':<6}{'  ' + name:<23}{'':>12}{phase['best_s']:>9.2f}{'':>10}{phase['gflops']:>9.1f}"
                  f"{phase['mfu']:>7.1%}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpu": machine_name(), "logical_cpus": os.cpu_count(), "threads": args.threads,
                        "cuda": torch.cuda.is_available(), "torch": torch.__version__},
            "peak_flops": peaks, "mfu_against": "bfloat16" if args.bf16 else "float32",
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "model_path")},
            "rows": [asdict(row) for row in rows]}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
