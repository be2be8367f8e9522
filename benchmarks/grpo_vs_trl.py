"""GRPO, side by side: TRL's ``GRPOTrainer`` and tether's ``train_grpo`` on the same job.

    python benchmarks/grpo_vs_trl.py --model tiny
    python benchmarks/grpo_vs_trl.py --model default --lora --steps 4 --prompts-per-step 4 \\
        --num-generations 8 --max-new-tokens 32
    python benchmarks/grpo_vs_trl.py --model default --lora --tether-backend vllm   # .venv-vllm

``--tether-backend vllm`` runs tether with ``rollout.backend: vllm`` (in-process, eager, weights
pushed before each rollout; the push is inside the rollout time). TRL stays on ``model.generate``:
TRL 1.16's own vLLM mode supports vLLM 0.22-0.31 and pushes weights with the model's
``load_weights``, which the CPU backend (weights re-packed at load) does not take (docs/scaling.md).

Both trainers get the same model weights, the same arithmetic tasks in the same order (step k
samples the same P prompts on both sides), the same group size N, completion budget, sampling
(temperature 1, top-p 1, no top-k), rewards (tether's ``math_answer`` weight 1 and
``think_answer_format`` weight 0.5), loss (``grpo``: per-sequence token mean, then mean over
rows; clip 0.2; beta 0, so no reference model), one policy update per rollout, AdamW at a
constant lr, clip-norm 1.0, seed, torch threads, no eval, no dropout. Each runs in its own fresh
process, one after the other, and reports:

    completions/s   P x N x steps completions, each sampled, scored and trained on, divided by
                    the seconds of the timed span (see README.md)
    peak RSS        that process's ru_maxrss (imports and model loading included), and the
                    largest resident set sampled during the timed span
    rewards         mean reward per step; sampling differs (tether draws tokens with its own
                    seeded generator, TRL with ``model.generate``), so they agree only roughly

One optimizer step consumes exactly one rollout batch on both sides: TRL gets
``per_device_train_batch_size = generation_batch_size = P*N``, ``steps_per_generation=1``,
``gradient_accumulation_steps=1``, ``num_iterations=1`` (one forward/backward over all P*N rows,
``old_per_token_logps`` skipped as on-policy); tether gets ``updates_per_rollout=1`` and
``minibatch_rows`` unset (all rows in one backward).

What stays different is what the benchmark measures: tether's sampler prefills each prompt once
and shares its KV cache with its N samples, and drops finished rows from the decode batch;
TRL's ``model.generate`` decodes P*N rows with the prompt copied N times. In the update, tether
again runs each prompt once and its N completions on the gathered KV cache (same gradients);
TRL's forward/backward runs P*N full prompt + completion rows. TRL's fused LM head
never builds (B, T, V) logits and computes per-token entropy for logging; tether builds the logits.
tether also writes a checkpoint after the last step, inside the span (TRL's saving is off).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import RssSampler, fmt, format_table, maxrss_mb, median, ratio, side_by_side  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ARITH_TASKS = REPO / "tether" / "resources" / "arith" / "train.jsonl"
TRAINERS = ("trl", "tether")
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
# tether's names and weights (the arith-grpo recipe's); TRL gets the same functions and weights.
REWARDS = (("math_answer", 1.0), ("think_answer_format", 0.5))
EPSILON = 0.2  # PPO clip range, both sides


# ---- data --------------------------------------------------------------------------------

def write_tasks(path: Path, count: int) -> None:
    """The first ``count`` arithmetic tasks (prompt + answer only), cycled if the file is short."""
    lines = [json.loads(line) for line in ARITH_TASKS.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{ARITH_TASKS} holds no tasks")
    # Ids are dropped so a cycled task is not a duplicate id.
    rows = [{key: lines[i % len(lines)][key] for key in ("prompt", "answer")} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def tether_task_order(count: int, prompts_per_step: int, seed: int) -> list[int]:
    """Task indices in the order tether's GRPO loop samples them (its first epoch).

    ``train_grpo`` draws ``torch.randperm(count)`` from a generator seeded with the plan's epoch
    seed (``train.seed`` for epoch 0) and cuts it into batches of ``prompts_per_step``. TRL gets
    its rows in this order with ``shuffle_dataset=False``. If tether's order ever changes, the
    prompts recorded by both children differ and the run is reported as not equivalent.
    """
    import torch

    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:count - count % prompts_per_step]


def prompt_key(prompt) -> str:
    """The text that tells tasks apart: the last message's content (the question)."""
    return prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)


# ---- settings shared by both children --------------------------------------------------

def tether_config(spec: dict, run_name: str):
    from tether.algorithms.grpo import GRPOConfig

    return GRPOConfig.model_validate({
        "model": {"path": spec["model_path"], "lora": LORA if spec["lora"] else None},
        "data": {"train": spec["data_path"]},
        "rollout": {"backend": spec.get("tether_backend", "transformers"), "kv_cache_gib": 1},
        "grpo": {"loss_type": "grpo", "num_generations": spec["num_generations"],
                 "prompts_per_step": spec["prompts_per_step"], "max_new_tokens": spec["max_new_tokens"],
                 "temperature": 1.0, "top_p": 1.0, "stop": [], "updates_per_rollout": 1,
                 "minibatch_rows": None, "epsilon_low": EPSILON, "epsilon_high": None, "beta": 0.0,
                 "advantage_scale": "group", "rloo": False, "dynamic_sampling": False,
                 "overlong_buffer": None,
                 "rewards": [{"name": name, "weight": weight} for name, weight in REWARDS]},
        "optim": {"lr": spec["lr"], "schedule": "constant", "warmup_steps": 0, "max_grad_norm": 1.0,
                  "weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8},
        "train": {"run_name": run_name, "output_dir": spec["work_dir"], "seed": spec["seed"],
                  "max_steps": spec["steps"], "grad_accum": 1, "bf16": spec["bf16"], "log_every": 1,
                  "progress": False, "tensorboard": False, "threads": spec["threads"]},
    })


def trainable_checksum(model) -> float:
    """Sum of |w| over the trainable weights: equal on both sides when they start alike."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.parameters() if p.requires_grad))


def finish(spec: dict, result: dict, rss: RssSampler) -> None:
    import resource

    completions = spec["steps"] * spec["prompts_per_step"] * spec["num_generations"]
    tokens = sum(result["completion_tokens"])
    span = result["span_s"]
    result.update(completions=completions, completions_per_s=completions / span,
                  completion_tokens_per_s=tokens / span,
                  completions_per_s_without_checkpoint=completions / (span - result["checkpoint_s"]),
                  rss_span_start_mb=rss.start_mb, rss_span_peak_mb=rss.peak_mb,
                  maxrss_self_mb=maxrss_mb(resource.getrusage(resource.RUSAGE_SELF)))
    Path(spec["result_path"]).write_text(json.dumps(result, indent=2))


# ---- tether child ------------------------------------------------------------------------

def run_tether(spec: dict) -> None:
    """tether's own entry point, ``train_grpo(config)``, with timers wrapped around its phases.

    Span: the life of the run's ``TrainingSession``, from its construction (optimizer, metrics
    file) to ``close()`` after the last step: every rollout, reward, update, metrics line, and
    the checkpoint written after the last step. The curves plot and the final model export that
    ``train_grpo`` does after the loop are timed but outside the span.
    """
    import tether.algorithms.grpo as grpo
    import tether.engine.checkpoint as checkpoint
    from tether.engine import read_metrics

    marks: dict = {"checkpoint_s": 0.0}
    rollouts: list[dict] = []
    rss = RssSampler()

    class TimedSession(grpo.TrainingSession):
        def __init__(self, model, *args, **kwargs):
            marks["start_checksum"] = trainable_checksum(model)
            rss.start()
            marks["start"] = time.perf_counter()
            super().__init__(model, *args, **kwargs)

        def close(self) -> None:
            super().close()
            marks["end"] = time.perf_counter()
            rss.stop()

    class TimedSampler:
        def __init__(self, inner):
            self.inner = inner

        def sample(self, prompts, config):
            began = time.perf_counter()
            rollout = self.inner.sample(prompts, config)
            rollouts.append({"seconds": time.perf_counter() - began,
                             "prompts": [prompt_key(p) for p in prompts],
                             "prompt_tokens": int(rollout.prompt_mask.sum()),
                             "completion_tokens": int(rollout.completion_mask.sum())})
            return rollout

    real_checkpoint = checkpoint.save_checkpoint

    def timed_checkpoint(*args, **kwargs):
        began = time.perf_counter()
        path = real_checkpoint(*args, **kwargs)
        marks["checkpoint_s"] += time.perf_counter() - began
        return path

    real_make_sampler = grpo.make_sampler
    grpo.TrainingSession = TimedSession
    grpo.make_sampler = lambda *args, **kwargs: TimedSampler(real_make_sampler(*args, **kwargs))
    # Every module that imported save_checkpoint by name holds its own reference: wrap them all.
    for module in [m for name, m in sys.modules.items() if name.startswith("tether.")]:
        if getattr(module, "save_checkpoint", None) is real_checkpoint:
            module.save_checkpoint = timed_checkpoint
    config = tether_config(spec, "tether")
    entered = time.perf_counter()
    grpo.train_grpo(config)
    returned = time.perf_counter()

    history = [line for line in read_metrics(config.run_dir()) if "reward/mean" in line]
    finish(spec, {
        "trainer": "tether", "span_s": marks["end"] - marks["start"],
        "setup_s": marks["start"] - entered,  # start_run, model load (+LoRA), task loading
        "rollout_s": sum(r["seconds"] for r in rollouts), "checkpoint_s": marks["checkpoint_s"],
        "export_s": returned - marks["end"],  # curves plot + save_model(final), outside the span
        "start_checksum": marks["start_checksum"],
        "rewards": [h["reward/mean"] for h in history],
        "math_answer": [h.get("rewards/math_answer/mean") for h in history],
        # items_per_s covers one logging window = one step here (rollout .. optimizer step)
        "step_s": [h["rows_trained"] / h["items_per_s"] for h in history],
        "rollout_step_s": [r["seconds"] for r in rollouts],
        "prompts": [r["prompts"] for r in rollouts],
        "prompt_tokens": [r["prompt_tokens"] for r in rollouts],
        "completion_tokens": [r["completion_tokens"] for r in rollouts],
    }, rss)


# ---- TRL child ---------------------------------------------------------------------------

def run_trl(spec: dict) -> None:
    """``trl.GRPOTrainer`` on the same model, tasks and task order. Span: ``trainer.train()``."""
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tether.models import load_model
    from tether.rewards.resolve import resolve_reward

    rollouts: list[dict] = []
    n = spec["num_generations"]

    class TimedGRPOTrainer(GRPOTrainer):
        # _generate covers prompt tokenization, model.generate and decoding: what tether's
        # sampler.sample does. Its prompts arrive repeated N times, grouped by prompt.
        def _generate(self, prompts):
            began = time.perf_counter()
            output = super()._generate(prompts)
            prompt_ids, completion_ids = output[0], output[1]
            rollouts.append({"seconds": time.perf_counter() - began,
                             "prompts": [prompt_key(p) for p in prompts[::n]],
                             "prompt_tokens": sum(len(ids) for ids in prompt_ids),
                             "completion_tokens": sum(len(ids) for ids in completion_ids)})
            return output

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._began = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._began)

    entered = time.perf_counter()
    model, tokenizer = load_model(spec["model_path"])  # tether's loader: the same weights, pad token
    tasks = [json.loads(line) for line in Path(spec["data_path"]).read_text(encoding="utf-8").splitlines()]
    order = tether_task_order(len(tasks), spec["prompts_per_step"], spec["seed"])
    dataset = Dataset.from_list([tasks[i] for i in order])
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules=LORA["target_modules"], bias="none", task_type="CAUSAL_LM")
    rows_per_step = spec["prompts_per_step"] * n
    args = GRPOConfig(
        output_dir=str(Path(spec["work_dir"]) / "trl"), seed=spec["seed"], data_seed=spec["seed"],
        # one rollout batch of P*N completions = one micro-batch = one optimizer step
        per_device_train_batch_size=rows_per_step, steps_per_generation=1, gradient_accumulation_steps=1,
        num_iterations=1, num_generations=n, max_completion_length=spec["max_new_tokens"],
        temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
        loss_type="grpo", beta=0.0, epsilon=EPSILON, scale_rewards="group",
        multi_objective_aggregation="sum_then_normalize", reward_weights=[w for _, w in REWARDS],
        mask_truncated_completions=False, shuffle_dataset=False, remove_unused_columns=False,
        max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=1.0,
        bf16=spec["bf16"],  # TRL's default is True: set it explicitly either way
        gradient_checkpointing=spec["trl_gradient_checkpointing"],  # TRL's default is True
        use_cpu=True, logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_tqdm=True, disable_dropout=True, log_completions=False,
    )
    if args.generation_batch_size != rows_per_step or args.steps_per_generation != 1:
        raise SystemExit(f"TRL resolved generation_batch_size={args.generation_batch_size}, "
                         f"steps_per_generation={args.steps_per_generation}; expected {rows_per_step}, 1")
    timer = StepTimes()
    rewards = [resolve_reward(name) for name, _ in REWARDS]  # they read conversational completions too
    trainer = TimedGRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=dataset,
                               processing_class=tokenizer, peft_config=peft_config, callbacks=[timer])
    start_checksum = trainable_checksum(trainer.model)
    rss = RssSampler().start()
    began = time.perf_counter()
    trainer.train()
    ended = time.perf_counter()
    rss.stop()

    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    math_key = f"rewards/{rewards[0].__name__}/mean"
    finish(spec, {
        "trainer": "trl", "span_s": ended - began,
        "setup_s": began - entered,  # model load, dataset, GRPOTrainer construction (+LoRA)
        "rollout_s": sum(r["seconds"] for r in rollouts), "checkpoint_s": 0.0, "export_s": 0.0,
        "start_checksum": start_checksum,
        "rewards": [entry["reward"] for entry in logs],
        "math_answer": [entry.get(math_key) for entry in logs],
        "step_s": timer.seconds,
        "rollout_step_s": [r["seconds"] for r in rollouts],
        "prompts": [r["prompts"] for r in rollouts],
        "prompt_tokens": [r["prompt_tokens"] for r in rollouts],
        "completion_tokens": [r["completion_tokens"] for r in rollouts],
    }, rss)


# ---- parent: run both, compare -----------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "default"), default="tiny",
                        help="tiny: 2-layer random Llama; default: bundled SmolLM2-135M-Instruct")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=4, help="P: prompts sampled per step")
    parser.add_argument("--num-generations", type=int, default=8, help="N: completions per prompt (the group)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="completion budget, tokens")
    parser.add_argument("--lora", action="store_true", help="LoRA r=16 alpha=32 all-linear on both")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both")
    parser.add_argument("--lr", type=float, default=None, help="default 2e-4 with --lora, else 1e-5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each child")
    parser.add_argument("--order", default="trl,tether", help="which trainer runs first")
    parser.add_argument("--tether-backend", choices=("transformers", "vllm"), default="transformers",
                        help="tether's rollout.backend (vllm: run from .venv-vllm)")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="keep TRL's default gradient checkpointing (off by default: tether has none)")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    parser.add_argument("--work-dir", help="keep runs and results here (default: a temp dir, removed)")
    parser.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.num_generations < 2:
        parser.error("--num-generations must be at least 2 (a group needs a baseline)")
    for name in ("steps", "prompts_per_step", "max_new_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    args.order = [name.strip() for name in args.order.split(",")]
    if sorted(args.order) != sorted(TRAINERS):
        parser.error(f"--order must name {' and '.join(TRAINERS)}")
    args.lr = args.lr or (2e-4 if args.lora else 1e-5)
    return args


def prepare(args: argparse.Namespace, work_dir: Path) -> dict:
    if args.model == "tiny":
        from tether.models.tiny import save_tiny_llama

        model_path = str(save_tiny_llama(work_dir / "tiny-model", seed=args.seed))
    else:
        from tether.models import default_model_dir

        model_path = str(default_model_dir())  # imports the bundled GGUF once if not cached yet
    data_path = work_dir / "tasks.jsonl"
    # One epoch of tether's plan is exactly the run: every task is sampled once.
    write_tasks(data_path, args.steps * args.prompts_per_step)
    return {"model": args.model, "model_path": model_path, "data_path": str(data_path),
            "data_source": str(ARITH_TASKS.relative_to(REPO)), "steps": args.steps,
            "prompts_per_step": args.prompts_per_step, "num_generations": args.num_generations,
            "max_new_tokens": args.max_new_tokens, "lora": args.lora, "bf16": args.bf16, "lr": args.lr,
            "seed": args.seed, "threads": args.threads, "tether_backend": args.tether_backend,
            "trl_gradient_checkpointing": args.trl_gradient_checkpointing, "work_dir": str(work_dir)}


def equivalence(trl: dict, tether: dict) -> tuple[list[str], bool]:
    """Checks that the two runs were the same job; the prompts must match, the rest is reported."""
    notes = []
    same_prompts = trl["prompts"] == tether["prompts"]
    notes.append("prompts of every step identical" if same_prompts else
                 "PROMPTS DIFFER between the runs: they are not the same job and the ratios mean nothing")
    same_tokens = trl["prompt_tokens"] == tether["prompt_tokens"]
    notes.append("prompt tokens of every step identical (same chat-template rendering)" if same_tokens else
                 f"PROMPT TOKENS DIFFER per step: TRL {trl['prompt_tokens']} vs tether {tether['prompt_tokens']}")
    gap = abs(trl["start_checksum"] - tether["start_checksum"]) / max(abs(trl["start_checksum"]), 1e-12)
    notes.append(f"trainable weights at the start agree (sum |w| relative gap {gap:.1e})" if gap < 1e-9 else
                 f"trainable weights at the start differ (sum |w| relative gap {gap:.1e}; e.g. other "
                 "random LoRA A matrices): the workload is the same, the samples are not")
    return notes, same_prompts and same_tokens


def compare(results: dict[str, dict]) -> tuple[str, bool]:
    trl, tether = results["trl"], results["tether"]
    step = lambda r: median(r["step_s"][1:]) or median(r["step_s"])  # noqa: E731  first step warms up
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    length = lambda r: sum(r["completion_tokens"]) / r["completions"]  # noqa: E731
    rows = [
        ["completions/s (timed span)", trl["completions_per_s"], tether["completions_per_s"],
         ratio(tether["completions_per_s"], trl["completions_per_s"])],
        ["completion tokens/s (timed span)", trl["completion_tokens_per_s"], tether["completion_tokens_per_s"],
         ratio(tether["completion_tokens_per_s"], trl["completion_tokens_per_s"])],
        ["completions/s without checkpoint", trl["completions_per_s_without_checkpoint"],
         tether["completions_per_s_without_checkpoint"],
         ratio(tether["completions_per_s_without_checkpoint"], trl["completions_per_s_without_checkpoint"])],
        ["timed span s", trl["span_s"], tether["span_s"], ratio(tether["span_s"], trl["span_s"])],
        ["  of which rollout s", trl["rollout_s"], tether["rollout_s"], ratio(tether["rollout_s"], trl["rollout_s"])],
        ["  of which checkpoint s", trl["checkpoint_s"], tether["checkpoint_s"], None],
        ["median step s (steps 2..n)", step(trl), step(tether), ratio(step(tether), step(trl))],
        ["mean completion tokens", length(trl), length(tether), ratio(length(tether), length(trl))],
        ["peak RSS MiB (process)", trl["maxrss_mb"], tether["maxrss_mb"],
         ratio(tether["maxrss_mb"], trl["maxrss_mb"])],
        ["RSS MiB at span start", trl["rss_span_start_mb"], tether["rss_span_start_mb"],
         ratio(tether["rss_span_start_mb"], trl["rss_span_start_mb"])],
        ["peak RSS MiB in span (sampled)", trl["rss_span_peak_mb"], tether["rss_span_peak_mb"],
         ratio(tether["rss_span_peak_mb"], trl["rss_span_peak_mb"])],
        ["setup s (load, build)", trl["setup_s"], tether["setup_s"], None],
        ["after span s (plot, export)", trl["export_s"], tether["export_s"], None],
        ["load average before, after", f"{trl['load_avg_before']:.1f}, {trl['load_avg_after']:.1f}",
         f"{tether['load_avg_before']:.1f}, {tether['load_avg_after']:.1f}", None],
        ["mean reward (all steps)", mean(trl["rewards"]), mean(tether["rewards"]), None],
    ]
    summary = format_table(["", "TRL", "tether", "tether/TRL"], rows)
    per_step = format_table(
        ["step", "TRL reward", "tether reward", "TRL math acc", "tether math acc", "TRL tokens",
         "tether tokens", "TRL step s", "tether step s", "TRL rollout s", "tether rollout s"],
        [[i + 1, f"{trl['rewards'][i]:.4f}", f"{tether['rewards'][i]:.4f}",
          fmt(trl["math_answer"][i], 3), fmt(tether["math_answer"][i], 3),
          trl["completion_tokens"][i], tether["completion_tokens"][i], trl["step_s"][i], tether["step_s"][i],
          trl["rollout_step_s"][i], tether["rollout_step_s"][i]]
         for i in range(min(len(trl["rewards"]), len(tether["rewards"])))])
    notes, ok = equivalence(trl, tether)
    return f"{summary}\n\n{per_step}\n\n" + "\n".join(f"- {note}" for note in notes), ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        (run_trl if args.child == "trl" else run_tether)(spec)
        return 0

    return side_by_side(__file__, args, prepare, lambda spec, results: compare(results),
                        lambda r: {"completions_per_s": ratio(r["tether"]["completions_per_s"],
                                                              r["trl"]["completions_per_s"]),
                                   "completion_tokens_per_s": ratio(r["tether"]["completion_tokens_per_s"],
                                                                    r["trl"]["completion_tokens_per_s"]),
                                   "peak_rss": ratio(r["tether"]["maxrss_mb"], r["trl"]["maxrss_mb"])},
                        title=("GRPO benchmark: model={spec[model]} lora={spec[lora]} bf16={spec[bf16]} "
                 "steps={spec[steps]} prompts/step={spec[prompts_per_step]} generations={spec[num_generations]} "
                 "max_new_tokens={spec[max_new_tokens]} lr={spec[lr]:g} threads={spec[threads]} "
                 "tether rollout backend={spec[tether_backend]} "
                 "tasks={spec[data_source]}"),
                        ok_key="same_job")

if __name__ == "__main__":
    raise SystemExit(main())
