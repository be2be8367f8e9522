"""The reward model, PPO and the RLHF and CAI pipelines under torchrun: 2 processes (gloo, CPU)
train like 1.

One ``torchrun --nproc_per_node 2`` job (this file run as a script, ``worker`` below) trains the
Bradley-Terry reward model under DDP and FSDP2, PPO under DDP and FSDP2 (with the same samples per
prompt whichever rank draws them), resumes a 2-process PPO checkpoint under 2 processes, runs the
staged RLHF and CAI pipelines twice each (the rerun skips every stage), and checks that an error in
a rank-0-only stage reaches every rank. The test process runs the same jobs in one process and
compares, and resumes the 2-process PPO checkpoint in one process.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
from _torchrun import run_torchrun
from safetensors.torch import load_file
from test_distributed import COMMON, PerPromptSampler, assert_same_metrics, assert_same_weights, cut_back_to_step_2

from tether.algorithms.cai import CAIConfig
from tether.algorithms.ppo import PPOConfig
from tether.algorithms.reward import REPORT_FILE, RewardModelConfig
from tether.algorithms.rlhf import REPORT, RLHFConfig
from tether.config import load_config
from tether.engine import distributed, read_metrics
from tether.errors import ConfigError, TetherError

# ---- the jobs (the same configs in both worlds) --------------------------------------------


def reward_config(job: Path, name: str, *extra: str) -> RewardModelConfig:
    # 2 micro-batches of 2 pairs a step, one per rank; pairs of one prompt share a micro-batch.
    return load_config(RewardModelConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'pairs.jsonl'}", f"data.eval={job / 'held_out.jsonl'}",
        f"train.output_dir={job / 'runs'}", f"train.run_name={name}", "train.batch_size=2", "train.grad_accum=2",
        "train.max_steps=3", "train.eval_every=2", "reward.center_coefficient=0.01", *COMMON, *extra])


def ppo_config(job: Path, name: str, *extra: str) -> PPOConfig:
    # 4 prompts x 2 completions a step in minibatches of 3: some minibatches hold rows of one rank
    # only (the other makes a zero-weight pass). The adaptive controller moves kl_coef every step.
    return load_config(PPOConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'prompts.jsonl'}", f"train.output_dir={job / 'runs'}",
        f"train.run_name={name}", "ppo.rewards=[{name: 'test_distributed_rlhf:distinct_characters'}]",
        "ppo.prompts_per_step=4", "ppo.num_generations=2", "ppo.max_new_tokens=6", "ppo.minibatch_size=3",
        "ppo.ppo_epochs=2", "ppo.adaptive_kl=true", "ppo.kl_target=0.01", "ppo.kl_horizon=100",
        "train.max_steps=4", "train.save_every=2", "train.keep_last=3", *COMMON, *extra])


# DDP: full fine-tuning against a loaded reference, held-out evaluation on rank 0. FSDP2: LoRA (the
# reference is the base, with the weights gathered), whitened rewards, and an early stop on the KL.
# ddp: the critic warm-up pools its gradients over ranks (engine.distributed.all_reduce_sum_tensors)
PPO_VARIANTS = {"ddp": ["data.eval=JOB/prompts.jsonl", "ppo.eval_prompts=2", "optim.lr=3e-3",
                        "ppo.value_warmup_steps=3"],
                "fsdp": ["model.lora={r: 4, alpha: 8}", "ppo.whiten_rewards=true", "ppo.target_kl=0.02",
                         "optim.lr=5e-2"]}


def ppo_variant(job: Path, strategy: str) -> list[str]:
    return [setting.replace("JOB", str(job)) for setting in PPO_VARIANTS[strategy]]


def distinct_characters(prompts, completions, **_):
    """Varies between a random tiny model's completions: distinct characters per character."""
    return [len(set(text)) / (1 + len(text)) for text in completions]


def train_ppo_per_prompt(config: PPOConfig):
    """PPO with each prompt sampled alone from a (step, prompt) seed: the same completions
    whichever rank samples the prompt (``test_distributed.PerPromptSampler``)."""
    import tether.algorithms.ppo as ppo
    import tether.rollout.backends as backends  # make_sampler builds the rollout sampler

    original, backends.TransformersSampler = backends.TransformersSampler, PerPromptSampler
    try:
        return ppo.train_ppo(config)
    finally:
        backends.TransformersSampler = original


def rlhf_config(job: Path) -> RLHFConfig:
    return load_config(RLHFConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'prompts.jsonl'}", f"train.output_dir={job / 'runs'}",
        "train.run_name=rlhf", "train.progress=false", "train.tensorboard=false", "train.grad_accum=2",
        "generate.num_candidates=3",
        "generate.max_new_tokens=6", "generate.max_prompts=4", "rank.judge=length",
        "reward_model.max_steps=1", "reward_model.batch_size=4", "reward_model.max_length=64",
        "ppo.prompts_per_step=2", "ppo.num_generations=2", "ppo.max_new_tokens=4", "ppo.eval_prompts=2",
        "ppo.ppo_epochs=1", "ppo.kl_coef=0", "train.max_steps=1"])


class LengthJudge:
    """The longer response wins (a consistent judge; the tiny model's verdicts flip with the order)."""

    name = "length-judge"

    def judge(self, requests, constitution, *, progress=True):
        from tether.feedback.judge_backends import BackendVerdict

        def choice(a, b):
            return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"

        return [BackendVerdict(choice=choice(r.response_a, r.response_b), raw="") for r in requests]


def run_rlhf_with_length_judge(config: RLHFConfig) -> Path:
    import tether.feedback.judge_backends as backends
    from tether.algorithms.rlhf import run_rlhf

    original, backends.backend_from_spec = backends.backend_from_spec, lambda spec, **_: LengthJudge()
    try:
        return run_rlhf(config)
    finally:
        backends.backend_from_spec = original


def cai_config(job: Path) -> CAIConfig:
    # Under 2 processes SFT and DPO deal out 2 micro-batches of 1 example a step, one per rank.
    return load_config(CAIConfig, None, [
        f"train.output_dir={job / 'runs'}", "train.progress=false", f"prompts.path={job / 'prompts.jsonl'}",
        "prompts.kinds=null", "prompts.limit=4", "critique.max_new_tokens=8", "critique.temperature=1.0",
        f"sft.model.path={job / 'model'}", "sft.model.lora.r=4", "sft.data.max_length=256", "sft.train.batch_size=1",
        "sft.train.grad_accum=2", "sft.train.max_steps=2", "sft.train.tensorboard=false", "rlaif.max_new_tokens=8",
        "rlaif.judge=length", "rlaif.api_key_env=null", "dpo.data.max_length=256", "dpo.train.batch_size=1",
        "dpo.train.grad_accum=2", "dpo.train.max_steps=2", "dpo.train.tensorboard=false"])


CAI_OUTPUTS = ["sft.jsonl", "sft/final/adapter_model.safetensors", "rlaif_items.jsonl", "judgments.jsonl",
               "preferences.jsonl", "dpo/final/adapter_model.safetensors", "summary.json"]


def run_cai_with_length_judge(config: CAIConfig) -> Path:
    import tether.algorithms.cai as cai

    original, cai.backend_from_spec = cai.backend_from_spec, lambda spec, **_: LengthJudge()
    try:
        return cai.run_cai(config)
    finally:
        cai.backend_from_spec = original


def failing_stage() -> None:
    raise ConfigError("rank 0 could not do it")


def worker(job: Path) -> None:
    """Run by each of the torchrun processes."""
    from tether.algorithms.reward import train_reward_model

    torch.set_num_threads(1)
    runs = job / "runs"
    for strategy in ("ddp", "fsdp"):
        train_reward_model(reward_config(job, f"rm_{strategy}", f"train.distributed={strategy}"))
    for strategy in ("ddp", "fsdp"):
        train_ppo_per_prompt(ppo_config(job, f"ppo_{strategy}", f"train.distributed={strategy}",
                                        *ppo_variant(job, strategy)))
    if distributed.is_main():
        cut_back_to_step_2(runs / "ppo_ddp", runs / "ppo_ddp_resumed2")
    distributed.barrier()
    train_ppo_per_prompt(ppo_config(job, "ppo_ddp_resumed2", "train.distributed=ddp", "train.resume=true",
                                    *ppo_variant(job, "ddp")))
    for _ in range(2):  # the second run finds every stage's output and skips it
        run_rlhf_with_length_judge(rlhf_config(job))
    run_cai_with_length_judge(cai_config(job))
    cai_run = job / "runs" / "cai"
    if distributed.is_main():  # the rerun below must leave every output as the first run wrote it
        (job / "cai-stamps.json").write_text(json.dumps({name: (cai_run / name).stat().st_mtime_ns
                                                         for name in CAI_OUTPUTS}))
    run_cai_with_length_judge(cai_config(job))
    late = job / "written-once.txt"
    if not distributed.is_main():
        time.sleep(2)  # rank 0 has written the file before this rank first looks for it
    distributed.main_writes(late, lambda: late.open("a").write("written\n"), "writing a file once")
    try:
        distributed.main_only(failing_stage, "the failing stage")
    except TetherError as error:  # ConfigError on rank 0, a TetherError naming the stage elsewhere
        (job / f"error-rank{distributed.world().rank}.txt").write_text(f"{type(error).__name__}: {error}")
    distributed.shutdown()


# ---- the test process ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from tether.models.tiny import save_tiny_llama

    job = tmp_path_factory.mktemp("dist_rlhf")
    save_tiny_llama(job / "model")
    with (job / "pairs.jsonl").open("w") as handle:  # odd prompts have two pairs: a group of 2
        for i in range(8):
            for j in range(1 + i % 2):
                handle.write(json.dumps({"prompt": f"Tell me about {i}.", "chosen": f"Sure: {i} is a number{'!' * j}",
                                         "rejected": "No." * (1 + (i + j) % 3)}) + "\n")
    with (job / "held_out.jsonl").open("w") as handle:
        for i in range(5):
            handle.write(json.dumps({"prompt": f"What about {i + 20}?", "chosen": f"{i + 20} is a number.",
                                     "rejected": "No."}) + "\n")
    with (job / "prompts.jsonl").open("w") as handle:
        for i in range(8):
            handle.write(json.dumps({"id": f"p{i}", "prompt": f"Say something about {i}."}) + "\n")
    run_torchrun(__file__, str(job))
    return job


def test_a_file_rank_0_writes_is_written_once_and_no_rank_hangs(job):
    # every rank returned from main_writes although rank 1 looked only after rank 0 had written
    assert (job / "written-once.txt").read_text() == "written\n"


def test_reward_model_under_ddp_and_fsdp_matches_one_process(job):
    from tether.algorithms.reward import train_reward_model

    train_reward_model(reward_config(job, "rm_one"))
    runs = job / "runs"
    for strategy in ("ddp", "fsdp"):
        run = runs / f"rm_{strategy}"
        assert_same_weights(run, runs / "rm_one")
        assert_same_metrics(run, runs / "rm_one", ["loss", "accuracy", "margin", "centering", "grad_norm",
                                                   "eval/loss", "eval/accuracy", "eval/ece"])
        config = json.loads((run / "final" / "config.json").read_text())
        assert config["architectures"] == ["LlamaForSequenceClassification"]  # the one-process format
        report, alone = (json.loads((r / REPORT_FILE).read_text()) for r in (run, runs / "rm_one"))
        for when in ("held_out_before", "held_out_after"):
            for key in ("loss", "accuracy", "ece", "reward_mean"):
                assert report[when][key] == pytest.approx(alone[when][key], rel=1e-4, abs=1e-6), (when, key)
    assert [row["step"] for row in read_metrics(runs / "rm_one") if "eval/accuracy" in row] == [2, 3]


PPO_KEYS = ["reward/mean", "reward/std", "rewards/distinct_characters/mean", "kl", "kl_coef", "next_kl_coef",
            "rlhf_reward", "entropy", "value/mean", "completion_length", "loss/policy",
            "loss/value", "clipfrac", "vf_clipfrac", "approx_kl", "ratio", "updates", "early_stopped", "grad_norm"]


def same_tensors(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    """Equal to float rounding. PPO makes 16 Adam updates from forwards at other padding widths
    (each rank pads its own rollout), so rounding grows to ~2e-5 by the end: 5e-5 leaves headroom,
    and a batch statistic taken over one rank's rows instead of the step's is off by far more."""
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], atol=5e-5, rtol=1e-4, msg=name)


def value_heads_match(a: Path, b: Path) -> None:
    left, right = (load_file(str(run / "final" / "value_head.safetensors")) for run in (a, b))
    assert left.keys() == {"summary.weight", "summary.bias"}
    assert all(value.abs().sum() > 0 for value in left.values())  # the head trained away from its zero start
    same_tensors(left, right)


@pytest.mark.parametrize("strategy", PPO_VARIANTS)
def test_ppo_matches_one_process(job, strategy):
    """Whitening, the KL controller, minibatch losses and the early stop see the whole step's rows:
    2 processes log the same numbers and reach the same policy and value head as 1."""
    train_ppo_per_prompt(ppo_config(job, f"ppo_one_{strategy}", *ppo_variant(job, strategy)))
    runs = job / "runs"
    two, one = runs / f"ppo_{strategy}", runs / f"ppo_one_{strategy}"
    keys = PPO_KEYS + (["eval/proxy_reward", "eval/kl"] if strategy == "ddp" else [])
    assert_same_metrics(two, one, keys)
    # 1 - Var[R - V] / Var[R] is near 0 here: float32 rounding of the variances shows at 1e-6.
    assert [row["explained_variance"] for row in read_metrics(two) if "updates" in row] == pytest.approx(
        [row["explained_variance"] for row in read_metrics(one) if "updates" in row], abs=1e-5)
    weights = "adapter_model.safetensors" if strategy == "fsdp" else "model.safetensors"
    same_tensors(*(load_file(str(run / "final" / weights)) for run in (two, one)))
    value_heads_match(two, one)
    history = [row for row in read_metrics(one) if "kl_coef" in row]
    assert len({row["kl_coef"] for row in history}) == len(history)  # the controller moved it every step
    if strategy == "fsdp":  # the early stop fired on some steps (not on all updates of every step)
        assert any(row["early_stopped"] == 1.0 for row in history)
        assert any(row["updates"] > 1 for row in history)


def test_ppo_checkpoint_of_two_processes_resumes_under_one_and_two(job):
    runs = job / "runs"
    if not (runs / "ppo_one_ddp").exists():
        train_ppo_per_prompt(ppo_config(job, "ppo_one_ddp", *ppo_variant(job, "ddp")))
    cut_back_to_step_2(runs / "ppo_ddp", runs / "ppo_ddp_resumed1")
    state = json.loads((runs / "ppo_ddp_resumed1" / "checkpoints" / "checkpoint-0000002" / "state.json").read_text())
    train_ppo_per_prompt(ppo_config(job, "ppo_ddp_resumed1", "train.resume=true", *ppo_variant(job, "ddp")))
    uninterrupted = [row for row in read_metrics(runs / "ppo_one_ddp") if "kl_coef" in row]
    assert state["kl_coef"] == pytest.approx(uninterrupted[1]["next_kl_coef"], rel=1e-5)
    for resumed in ("ppo_ddp_resumed1", "ppo_ddp_resumed2"):
        same_tensors(*(load_file(str(run / "final" / "model.safetensors")) for run in (runs / resumed,
                                                                                      runs / "ppo_one_ddp")))
        value_heads_match(runs / resumed, runs / "ppo_one_ddp")
        assert_same_metrics(runs / resumed, runs / "ppo_one_ddp", ["kl_coef", "reward/mean", "loss/value"])


def test_rlhf_pipeline_under_torchrun_and_its_rerun_skips_every_stage(job):
    run = job / "runs" / "rlhf"
    report = json.loads((run / REPORT).read_text())  # written by the rerun
    assert report["seconds"] == {"generate": None, "rank": None, "reward_model": None, "ppo": None}
    assert (report["before_step"], report["after_step"]) == (0, 1)
    assert report["reward_model"]["train_pairs"] > 0
    assert (run / "4-ppo" / "final" / "value_head.safetensors").is_file()
    assert len((run / "1-candidates.jsonl").read_text().splitlines()) == 4  # written once, by rank 0


def test_cai_pipeline_under_torchrun_and_its_rerun_skips_every_stage(job):
    run = job / "runs" / "cai"
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary) == ["critique", "sft", "rlaif-generate", "judge", "preferences", "dpo"]
    assert summary["critique"]["prompts"] == 4 and summary["rlaif-generate"]["items"] == 4
    assert summary["preferences"]["pairs"] > 0
    stamps = json.loads((job / "cai-stamps.json").read_text())
    assert {name: (run / name).stat().st_mtime_ns for name in CAI_OUTPUTS} == stamps


def test_an_error_in_a_rank_0_stage_reaches_every_rank(job):
    assert (job / "error-rank0.txt").read_text() == "ConfigError: rank 0 could not do it"
    assert (job / "error-rank1.txt").read_text() == ("TetherError: the failing stage failed on rank 0; "
                                                     "its error is in rank 0's output")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
