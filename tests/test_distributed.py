"""Data parallelism on CPU (gloo): 2 processes on a global batch train like 1 process.

One ``torchrun --nproc_per_node 2`` job (this file run as a script, ``worker`` below) trains
SFT and DPO under DDP, SFT under FSDP2, GRPO under DDP, and resumes its own checkpoints under 2
processes. The test process runs the same jobs in one process and compares final weights and
logged numbers, and resumes the 2-process checkpoints in one process.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zlib
from pathlib import Path

import pytest
import torch
from _torchrun import run_torchrun
from safetensors.torch import load_file

from tether.algorithms.dpo import DPOConfig
from tether.algorithms.grpo import GRPOConfig
from tether.algorithms.sft import SFTConfig
from tether.config import load_config
from tether.engine import distributed, read_metrics
from tether.errors import ConfigError
from tether.rollout.sampler import TransformersSampler

COMMON = ["train.progress=false", "train.tensorboard=false", "train.bf16=false", "optim.lr=1e-2",
          "optim.schedule=constant"]


# ---- the jobs (the same configs in both worlds) --------------------------------------------

def sft_config(job: Path, name: str, *extra: str) -> SFTConfig:
    # A global batch of 4 sequences: 2 micro-batches of 2, one per rank under torchrun.
    return load_config(SFTConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'sft.jsonl'}", f"train.output_dir={job / 'runs'}",
        f"train.run_name={name}", "train.batch_size=2", "train.grad_accum=2", "train.max_steps=4",
        "train.save_every=2", "train.keep_last=3", *COMMON, *extra])


def dpo_config(job: Path, name: str, *extra: str) -> DPOConfig:
    return load_config(DPOConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'pairs.jsonl'}", f"train.output_dir={job / 'runs'}",
        f"train.run_name={name}", "train.batch_size=2", "train.grad_accum=2", "train.max_steps=3",
        "dpo.sft_weight=0.5", *COMMON, *extra])


def grpo_config(job: Path, name: str, *extra: str) -> GRPOConfig:
    return load_config(GRPOConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'tasks.jsonl'}", f"train.output_dir={job / 'runs'}",
        f"train.run_name={name}", "grpo.rewards=[{name: 'test_distributed:spread_reward'}]",
        "grpo.num_generations=4", "grpo.prompts_per_step=4", "grpo.max_new_tokens=6", "grpo.minibatch_rows=4",
        "grpo.updates_per_rollout=2", "grpo.beta=0.05", "train.max_steps=3", *COMMON, *extra])


# FSDP: rollouts with gathered weights; DAPO's token normalizer summed over ranks; dynamic
# sampling leaves ranks with different row counts (zero-weight passes keep them in lockstep).
GRPO_VARIANTS = {"ddp": [], "fsdp": ["grpo.loss_type=dapo", "grpo.dynamic_sampling=true", "grpo.minibatch_rows=3"]}


def spread_reward(prompts, completions, answer, **_):
    """Varies between a random tiny model's completions (distinct characters per character),
    except on answer "1", where every completion scores 0: a flat group, which dynamic sampling
    drops, so the ranks are left with different numbers of rows."""
    return [0.0 if a == "1" else len(set(text)) / (1 + len(text)) for text, a in zip(completions, answer)]


class PerPromptSampler(TransformersSampler):
    """Each prompt sampled alone with a seed from (step, prompt text), so a prompt gets the same
    completions whichever rank samples it; the real sampler draws one random stream per batch."""

    def sample(self, prompts, config):
        from tether.data import encode_prompt

        step_seed = config.seed // int(os.environ.get("WORLD_SIZE", "1"))  # undo the per-rank stream
        groups = [self._decode([encode_prompt(p, self.tokenizer)], config, torch.Generator().manual_seed(
            step_seed * 7919 + zlib.crc32(json.dumps(p).encode()))) for p in prompts]
        return self._join(groups, len(prompts), config.num_samples, self.model.device)


def train_grpo_per_prompt(config: GRPOConfig):
    import tether.algorithms.grpo as grpo
    import tether.rollout.backends as backends  # make_sampler builds the rollout sampler

    original, backends.TransformersSampler = backends.TransformersSampler, PerPromptSampler
    try:
        return grpo.train_grpo(config)
    finally:
        backends.TransformersSampler = original


def cut_back_to_step_2(source: Path, target: Path) -> None:
    """A copy of a finished run as if it had been killed after its step-2 checkpoint."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    shutil.rmtree(target / "checkpoints" / "checkpoint-0000004")
    shutil.rmtree(target / "final")


def worker(job: Path) -> None:
    """Run by each of the torchrun processes."""
    from tether.algorithms.dpo import train_dpo
    from tether.algorithms.sft import train_sft

    torch.set_num_threads(1)
    runs = job / "runs"
    train_sft(sft_config(job, "sft_ddp", "train.distributed=ddp"))
    train_sft(sft_config(job, "sft_fsdp", "train.distributed=fsdp"))
    train_dpo(dpo_config(job, "dpo_ddp", "train.distributed=ddp"))
    for strategy, extra in GRPO_VARIANTS.items():
        train_grpo_per_prompt(grpo_config(job, f"grpo_{strategy}", f"train.distributed={strategy}", *extra))
    for strategy in ("ddp", "fsdp"):
        if distributed.is_main():
            cut_back_to_step_2(runs / f"sft_{strategy}", runs / f"sft_{strategy}_resumed2")
        distributed.barrier()
        train_sft(sft_config(job, f"sft_{strategy}_resumed2", f"train.distributed={strategy}", "train.resume=true"))
    distributed.shutdown()


# ---- the test process ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from tether.models.tiny import save_tiny_llama

    job = tmp_path_factory.mktemp("dist")
    save_tiny_llama(job / "model")
    with (job / "sft.jsonl").open("w") as handle:
        for i in range(16):
            handle.write(json.dumps({"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."}) + "\n")
    with (job / "pairs.jsonl").open("w") as handle:
        for i in range(12):
            handle.write(json.dumps({"prompt": f"Tell me about {i}.", "chosen": f"Sure: {i} is a number.",
                                     "rejected": "No." * (1 + i % 3)}) + "\n")
    with (job / "tasks.jsonl").open("w") as handle:
        for i in range(8):
            handle.write(json.dumps({"prompt": f"Repeat the digit {i % 3 + 1}.", "answer": str(i % 3 + 1)}) + "\n")
    run_torchrun(__file__, str(job))
    return job


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float = 2e-5) -> None:
    left, right = final_weights(a), final_weights(b)
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], atol=atol, rtol=1e-4, msg=name)


def assert_same_metrics(a: Path, b: Path, keys: list[str]) -> None:
    left, right = read_metrics(a), read_metrics(b)
    assert [row["step"] for row in left] == [row["step"] for row in right]  # rank 0 wrote each line once
    for key in keys:
        assert any(key in row for row in right), key
    for row_a, row_b in zip(left, right):
        for key in keys:  # a step may lack a key in both runs (GRPO: no row left to train on)
            assert (key in row_a) == (key in row_b), (row_a["step"], key)
            if key in row_b:
                assert row_a[key] == pytest.approx(row_b[key], rel=1e-4, abs=1e-6), (row_a["step"], key)


def test_sft_under_ddp_and_fsdp_matches_one_process(job):
    from tether.algorithms.sft import train_sft

    train_sft(sft_config(job, "sft_one"))
    runs = job / "runs"
    initial = load_file(str(job / "model" / "model.safetensors"))
    moved = final_weights(runs / "sft_one")
    assert any(not torch.equal(moved[k], initial[k]) for k in moved)  # training did change the weights
    for strategy in ("ddp", "fsdp"):
        assert_same_weights(runs / f"sft_{strategy}", runs / "sft_one")
        assert_same_metrics(runs / f"sft_{strategy}", runs / "sft_one", ["loss", "tokens", "grad_norm"])
        assert (runs / f"sft_{strategy}" / "config.yaml").is_file()


def test_dpo_under_ddp_matches_one_process(job):
    from tether.algorithms.dpo import train_dpo

    train_dpo(dpo_config(job, "dpo_one"))
    runs = job / "runs"
    assert_same_weights(runs / "dpo_ddp", runs / "dpo_one")
    assert_same_metrics(runs / "dpo_ddp", runs / "dpo_one",
                        ["loss", "rewards/margins", "rewards/accuracies", "nll/chosen", "grad_norm"])


@pytest.mark.parametrize("strategy", GRPO_VARIANTS)
def test_grpo_matches_one_process(job, strategy):
    """Each rank samples half the prompts; rewards are gathered, so advantages and every logged
    number are the one-process ones, and the updates reach the same weights."""
    train_grpo_per_prompt(grpo_config(job, f"grpo_one_{strategy}", *GRPO_VARIANTS[strategy]))
    runs = job / "runs"
    assert_same_metrics(runs / f"grpo_{strategy}", runs / f"grpo_one_{strategy}",
                        ["reward/mean", "reward/std", "rewards/spread_reward/mean", "completion_length",
                         "frac_zero_variance_groups", "rows_trained", "loss", "kl", "clip_ratio/region_mean",
                         "grad_norm"])
    # Every layer is run twice per backward under FSDP2 (the shared prompt forward, then the completions),
    # so its gradient is reduced in a different order than in one process: grad norms agree to 1e-6, but
    # Adam turns rounding on near-zero gradients into steps of up to lr (1e-2) on those few weights.
    assert_same_weights(runs / f"grpo_{strategy}", runs / f"grpo_one_{strategy}",
                        atol=2e-4 if strategy == "fsdp" else 2e-5)
    history = read_metrics(runs / f"grpo_one_{strategy}")
    assert all(row["reward/std"] > 0 for row in history)
    if strategy == "fsdp":  # some groups dropped, some trained
        assert any(0 < row["frac_zero_variance_groups"] < 1 for row in history)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_checkpoints_resume_under_one_and_two(job, strategy):
    from tether.algorithms.sft import train_sft

    runs = job / "runs"
    if not (runs / "sft_one").exists():
        train_sft(sft_config(job, "sft_one"))
    cut_back_to_step_2(runs / f"sft_{strategy}", runs / f"sft_{strategy}_resumed1")
    train_sft(sft_config(job, f"sft_{strategy}_resumed1", "train.resume=true"))
    for resumed in (f"sft_{strategy}_resumed1", f"sft_{strategy}_resumed2"):
        assert_same_weights(runs / resumed, runs / "sft_one")
        assert [row["step"] for row in read_metrics(runs / resumed)] == [1, 2, 3, 4]
        assert_same_metrics(runs / resumed, runs / "sft_one", ["loss"])


def test_micro_batches_are_dealt_whole_and_must_divide(monkeypatch):
    monkeypatch.setattr(distributed, "_world", distributed.World(rank=1, size=2))
    assert distributed.local_micro_batches([[0, 1], [2, 3], [4], [5, 6]]) == [[2, 3], [5, 6]]
    assert distributed.local_block([10, 11, 12, 13]) == ([12, 13], slice(2, 4))
    with pytest.raises(ConfigError,
                       match=r"train.grad_accum \(3\) must be a multiple of the number of processes \(2\)"):
        distributed.local_micro_batches([[0], [1], [2]])
    with pytest.raises(ConfigError, match="3 prompts per step do not split evenly over 2 processes"):
        distributed.local_block([0, 1, 2])


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
