"""DPO, side by side: TRL's ``DPOTrainer`` and tether's ``train_dpo`` on the same job.

    python benchmarks/dpo_vs_trl.py --model tiny
    python benchmarks/dpo_vs_trl.py --model default --lora --steps 8 --batch-size 4 [--bf16]

Both trainers get the same model weights, the same token ids, the same batches in the same
order, and the same hyperparameters (sigmoid loss, beta 0.1, AdamW, constant lr, no warmup,
clip 1.0, grad_accum 1, seed, 2 torch threads, no eval, no dropout). Each runs in its own fresh
process, one after the other, and reports:

    pairs/s      preference pairs trained / seconds of the timed span (see README.md)
    peak RSS     that process's ru_maxrss (imports and model loading included), and the
                 largest resident set sampled during the timed span
    losses       per step; the first is log 2 = 0.6931 for both (policy == reference)

How the jobs are made identical:
  * tokens: the pairs are tokenized once by tether (chat template, end-of-turn token) and the
    same ids are handed to TRL, whose own tokenization is skipped (``_TokenizedDPOTrainer``);
  * batches: tether groups pairs of similar length (``BatchPlan``); TRL is given the pairs in
    exactly that order with a sequential sampler, so step k sees the same pairs;
  * LoRA: r=16, alpha=32, dropout 0, all-linear on both, created right after seeding with the
    same seed, so the adapters start from the same random A matrices.
What stays different is what the benchmark measures: TRL (``precompute_ref_log_probs`` left at
its default, False) runs a no-grad reference forward in every step; tether computes reference
log-probs once before training, and reads each pair as one packed row, prompt then both answers
under a block mask (TRL runs 2B full prompt + answer rows). TRL's fused LM head never builds (B, T, V) logits;
tether does.
tether also writes a checkpoint after the last step, inside the span (TRL's saving is off).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import RssSampler, fmt, format_table, maxrss_mb, median, ratio, side_by_side  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAFETY_PAIRS = REPO / "tether" / "resources" / "safety" / "train.jsonl"
TRAINERS = ("trl", "tether")
BETA = 0.1
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
FIRST_LOSS_TOLERANCE = 1e-3


# ---- data --------------------------------------------------------------------------------

_WORDS = ("the a to of and in is it you that for on with as this be are your can how what when "
          "should would could make help want need know about safe way people time work people home "
          "water energy garden recipe story letter email plan budget trip city school project "
          "computer program file process data network password account doctor health sleep food "
          "question answer explain describe simple careful quickly slowly first next then finally "
          "because however also often never always usually step steps guide list example ideas "
          "friend family team manager teacher student child neighbor weekend morning evening "
          "write read build fix clean cook learn start stop open close choose check find keep "
          "important useful common better different small large new old good bad best easy hard").split()


def synthetic_pairs(count: int, seed: int) -> list[dict]:
    """Preference pairs of the safety set's shape: prompt ~15 words, chosen ~40, rejected ~30."""
    rng = random.Random(seed)

    def sentence(words: int) -> str:
        text = " ".join(rng.choice(_WORDS) for _ in range(words))
        return text[0].upper() + text[1:] + "."

    return [{"prompt": sentence(rng.randint(12, 18)).rstrip(".") + "?",
             "chosen": sentence(rng.randint(32, 48)), "rejected": sentence(rng.randint(24, 36))}
            for _ in range(count)]


def write_pairs(path: Path, source: str, count: int, seed: int) -> str:
    """Write ``count`` pairs (prompt/chosen/rejected only) to ``path``; returns what was used."""
    if source == "auto":
        source = "safety" if SAFETY_PAIRS.is_file() else "synthetic"
    if source == "synthetic":
        rows = synthetic_pairs(count, seed)
    else:
        file = SAFETY_PAIRS if source == "safety" else Path(source)
        lines = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise SystemExit(f"{file} holds no pairs")
        # Cycle when the file is short; ids are dropped so repeated rows stay valid.
        rows = [{k: lines[i % len(lines)][k] for k in ("prompt", "chosen", "rejected")} for i in range(count)]
        source = str(file)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return source


# ---- settings shared by both children --------------------------------------------------

def tether_config(spec: dict, run_name: str):
    from tether.algorithms.dpo import DPOConfig

    return DPOConfig.model_validate({
        "model": {"path": spec["model_path"], "lora": LORA if spec["lora"] else None},
        "data": {"train": spec["data_path"], "max_length": spec["max_length"]},
        "dpo": {"beta": BETA, "loss_type": "sigmoid"},
        "optim": {"lr": spec["lr"], "schedule": "constant", "warmup_steps": 0, "max_grad_norm": 1.0,
                  "weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8},
        "train": {"run_name": run_name, "output_dir": spec["work_dir"], "seed": spec["seed"],
                  "max_steps": spec["steps"], "batch_size": spec["batch_size"], "grad_accum": 1,
                  "bf16": spec["bf16"], "log_every": 1, "progress": False, "tensorboard": False,
                  "threads": spec["threads"]},
    })


def finish(spec: dict, result: dict, rss: RssSampler) -> None:
    import resource

    pairs = spec["steps"] * spec["batch_size"]
    result.update(pairs=pairs, pairs_per_s=pairs / result["span_s"], rss_span_start_mb=rss.start_mb,
                  rss_span_peak_mb=rss.peak_mb,
                  maxrss_self_mb=maxrss_mb(resource.getrusage(resource.RUSAGE_SELF)))
    Path(spec["result_path"]).write_text(json.dumps(result, indent=2))


# ---- tether child ------------------------------------------------------------------------

def run_tether(spec: dict) -> None:
    """tether's own entry point, ``train_dpo(config)``, with timers wrapped around its phases.

    Span: from the first call of ``compute_reference`` (reference log-probs) to the return of
    ``fit`` (the last optimizer step and the checkpoint ``fit`` writes after it). The export of
    the final model that ``train_dpo`` does after ``fit`` is timed but outside the span.
    """
    import tether.algorithms.dpo as dpo
    import tether.engine.checkpoint as checkpoint

    marks: dict = {"reference_s": 0.0, "checkpoint_s": 0.0}
    rss = RssSampler()
    real_reference, real_fit, real_checkpoint = dpo.compute_reference, dpo.fit, checkpoint.save_checkpoint

    def timed_reference(*args, **kwargs):
        if "start" not in marks:
            rss.start()
            marks["start"] = time.perf_counter()
        began = time.perf_counter()
        real_reference(*args, **kwargs)
        marks["reference_s"] += time.perf_counter() - began

    def timed_fit(*args, **kwargs):
        outcome = real_fit(*args, **kwargs)
        marks["end"] = time.perf_counter()
        rss.stop()
        marks["history"] = outcome.history
        return outcome

    def timed_checkpoint(*args, **kwargs):
        began = time.perf_counter()
        path = real_checkpoint(*args, **kwargs)
        marks["checkpoint_s"] += time.perf_counter() - began
        return path

    dpo.compute_reference, dpo.fit = timed_reference, timed_fit
    # Every module that imported save_checkpoint by name holds its own reference: wrap them all.
    for module in [m for name, m in sys.modules.items() if name.startswith("tether.")]:
        if getattr(module, "save_checkpoint", None) is real_checkpoint:
            module.save_checkpoint = timed_checkpoint
    entered = time.perf_counter()
    dpo.train_dpo(tether_config(spec, "tether"))
    returned = time.perf_counter()

    history = marks["history"]
    finish(spec, {
        "trainer": "tether", "span_s": marks["end"] - marks["start"],
        "setup_s": marks["start"] - entered,  # start_run, model load, tokenization, batch plan
        "reference_s": marks["reference_s"], "checkpoint_s": marks["checkpoint_s"],
        "export_s": returned - marks["end"],  # save_model(final) after fit, outside the span
        "losses": [h["loss"] for h in history],
        # items_per_s covers one logging window = one step here (collate .. optimizer.step)
        "step_s": [spec["batch_size"] / h["items_per_s"] for h in history],
        "grad_norms": [h["grad_norm"] for h in history],
    }, rss)


# ---- TRL child ---------------------------------------------------------------------------

def tether_batches(spec: dict, tokenizer):
    """The token ids tether trains on, and the pair indices of every step, in tether's order."""
    from tether.algorithms.common import epoch_schedule
    from tether.algorithms.dpo import encode_pairs, pair_length
    from tether.engine import BatchPlan

    config = tether_config(spec, "trl-data")
    examples = encode_pairs(config.data.train, tokenizer, config)
    lengths = [pair_length(p) for p in examples.encoded]
    plan = BatchPlan(epoch_schedule(lengths, config.data, spec["batch_size"]), seed=spec["seed"],
                     grad_accum=1, max_steps=spec["steps"])
    steps = [plan.micro_batches(step)[0] for step in range(spec["steps"])]
    short = [i for i, batch in enumerate(steps) if len(batch) != spec["batch_size"]]
    if short:
        raise SystemExit(f"tether's step {short[0] + 1} has {len(steps[short[0]])} pairs, not "
                         f"{spec['batch_size']}; use --pairs that is a multiple of --batch-size")
    return examples.encoded, steps


def run_trl(spec: dict) -> None:
    """``trl.DPOTrainer`` on the same model, ids and batch order. Span: ``trainer.train()``."""
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tether.models import load_model

    class _TokenizedDPOTrainer(DPOTrainer):
        # The pairs arrive as tether's token ids; TRL's own chat-template tokenization would
        # keep the newline after <|im_end|> in the completion and so train on other tokens.
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

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
    encoded, steps = tether_batches(spec, tokenizer)
    rows = [{key: encoded[i][key] for key in ("prompt_ids", "chosen_ids", "rejected_ids")}
            for batch in steps for i in batch]
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules=LORA["target_modules"], bias="none", task_type="CAUSAL_LM")
    args = DPOConfig(
        output_dir=str(Path(spec["work_dir"]) / "trl"), seed=spec["seed"], data_seed=spec["seed"],
        per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=1.0, beta=BETA, loss_type=["sigmoid"], max_length=spec["max_length"],
        truncation_mode="keep_start", train_sampling_strategy="sequential",
        bf16=spec["bf16"],  # TRL's default is True: set it explicitly either way
        gradient_checkpointing=spec["trl_gradient_checkpointing"],  # TRL's default is True
        use_cpu=True, logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_tqdm=True, disable_dropout=True,
    )
    timer = StepTimes()
    trainer = _TokenizedDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                   processing_class=tokenizer, peft_config=peft_config, callbacks=[timer])
    rss = RssSampler().start()
    began = time.perf_counter()
    trainer.train()
    ended = time.perf_counter()
    rss.stop()

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    finish(spec, {
        "trainer": "trl", "span_s": ended - began,
        "setup_s": began - entered,  # model load, tokenization, DPOTrainer construction
        "reference_s": None, "checkpoint_s": 0.0, "export_s": 0.0,
        "losses": [entry["loss"] for entry in logs], "step_s": timer.seconds,
        "grad_norms": [entry.get("grad_norm") for entry in logs],
    }, rss)


# ---- parent: run both, compare -----------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "default"), default="tiny",
                        help="tiny: 2-layer random Llama; default: bundled SmolLM2-135M-Instruct")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4, help="preference pairs per step")
    parser.add_argument("--max-length", type=int, default=192, help="prompt + completion tokens")
    parser.add_argument("--pairs", type=int, default=None,
                        help="pairs in the training file (default: steps x batch size, one epoch)")
    parser.add_argument("--lora", action="store_true", help="LoRA r=16 alpha=32 all-linear on both")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both")
    parser.add_argument("--lr", type=float, default=None, help="default 5e-4 with --lora, else 5e-5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each child")
    parser.add_argument("--data", default="auto",
                        help="auto (safety pairs if present, else synthetic) | safety | synthetic | PATH")
    parser.add_argument("--order", default="trl,tether", help="which trainer runs first")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="keep TRL's default gradient checkpointing (off by default: tether has none)")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    parser.add_argument("--work-dir", help="keep runs and results here (default: a temp dir, removed)")
    parser.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.pairs = args.pairs or args.steps * args.batch_size
    if args.pairs % args.batch_size:
        parser.error("--pairs must be a multiple of --batch-size (tether's last batch would be short)")
    args.order = [name.strip() for name in args.order.split(",")]
    if sorted(args.order) != sorted(TRAINERS):
        parser.error(f"--order must name {' and '.join(TRAINERS)}")
    args.lr = args.lr or (5e-4 if args.lora else 5e-5)
    return args


def prepare(args: argparse.Namespace, work_dir: Path) -> dict:
    if args.model == "tiny":
        from tether.models.tiny import save_tiny_llama

        model_path = str(save_tiny_llama(work_dir / "tiny-model", seed=args.seed))
    else:
        from tether.models import default_model_dir

        model_path = str(default_model_dir())  # imports the bundled GGUF once if not cached yet
    data_path = work_dir / "pairs.jsonl"
    data_source = write_pairs(data_path, args.data, args.pairs, args.seed)
    return {"model": args.model, "model_path": model_path, "data_path": str(data_path),
            "data_source": data_source, "steps": args.steps, "batch_size": args.batch_size,
            "max_length": args.max_length, "pairs_in_file": args.pairs, "lora": args.lora,
            "bf16": args.bf16, "lr": args.lr, "seed": args.seed, "threads": args.threads,
            "trl_gradient_checkpointing": args.trl_gradient_checkpointing, "work_dir": str(work_dir)}


def compare(spec: dict, results: dict[str, dict]) -> tuple[str, bool]:
    trl, tether = results["trl"], results["tether"]
    step = lambda r: median(r["step_s"][1:]) or median(r["step_s"])  # noqa: E731  first step warms up
    rows = [
        ["pairs/s (timed span)", trl["pairs_per_s"], tether["pairs_per_s"],
         ratio(tether["pairs_per_s"], trl["pairs_per_s"])],
        ["timed span s", trl["span_s"], tether["span_s"], ratio(tether["span_s"], trl["span_s"])],
        ["  of which reference s", trl["reference_s"], tether["reference_s"], None],
        ["  of which checkpoint s", trl["checkpoint_s"], tether["checkpoint_s"], None],
        ["median step s (steps 2..n)", step(trl), step(tether), ratio(step(tether), step(trl))],
        ["peak RSS MiB (process)", trl["maxrss_mb"], tether["maxrss_mb"],
         ratio(tether["maxrss_mb"], trl["maxrss_mb"])],
        ["RSS MiB at span start", trl["rss_span_start_mb"], tether["rss_span_start_mb"],
         ratio(tether["rss_span_start_mb"], trl["rss_span_start_mb"])],
        ["peak RSS MiB in span (sampled)", trl["rss_span_peak_mb"], tether["rss_span_peak_mb"],
         ratio(tether["rss_span_peak_mb"], trl["rss_span_peak_mb"])],
        ["setup s (load, tokenize, build)", trl["setup_s"], tether["setup_s"], None],
        ["load average before, after", f"{trl['load_avg_before']:.1f}, {trl['load_avg_after']:.1f}",
         f"{tether['load_avg_before']:.1f}, {tether['load_avg_after']:.1f}", None],
        ["first loss", trl["losses"][0], tether["losses"][0], None],
        ["final loss", trl["losses"][-1], tether["losses"][-1], None],
    ]
    for row in rows:
        row[1:] = [fmt(v, 4) if isinstance(v, float) and "loss" in row[0] else v for v in row[1:]]
    summary = format_table(["", "TRL", "tether", "tether/TRL"], rows)
    losses = format_table(["step", "TRL loss", "tether loss", "|diff|", "TRL step s", "tether step s"], [
        [i + 1, f"{a:.5f}", f"{b:.5f}", f"{abs(a - b):.1e}", trl["step_s"][i], tether["step_s"][i]]
        for i, (a, b) in enumerate(zip(trl["losses"], tether["losses"]))])
    first_gap = abs(trl["losses"][0] - tether["losses"][0])
    ok = first_gap <= FIRST_LOSS_TOLERANCE
    verdict = (f"first losses agree to {first_gap:.1e} (tolerance {FIRST_LOSS_TOLERANCE:g})" if ok else
               f"FIRST LOSSES DIFFER by {first_gap:.1e} (> {FIRST_LOSS_TOLERANCE:g}): the runs are not equivalent")
    return f"{summary}\n\n{losses}\n\n{verdict}", ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        (run_trl if args.child == "trl" else run_tether)(spec)
        return 0

    return side_by_side(__file__, args, prepare, compare,
                        lambda r: {"pairs_per_s": ratio(r["tether"]["pairs_per_s"], r["trl"]["pairs_per_s"]),
                                   "peak_rss": ratio(r["tether"]["maxrss_mb"], r["trl"]["maxrss_mb"])},
                        title=("DPO benchmark: model={spec[model]} lora={spec[lora]} bf16={spec[bf16]} "
                 "steps={spec[steps]} batch={spec[batch_size]} max_length={spec[max_length]} "
                 "pairs={spec[pairs_in_file]} data={spec[data_source]} threads={spec[threads]}"),
                        ok_key="first_loss_ok")

if __name__ == "__main__":
    raise SystemExit(main())
