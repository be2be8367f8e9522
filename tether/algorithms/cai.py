"""Constitutional AI (Bai et al., 2022): harmlessness from AI feedback, in two phases.

    tether train cai --config recipes/cai.yaml

Supervised phase (critique -> revision -> SFT):
    for each red-team prompt x:  y0 = policy(x)
        repeat ``critique.revisions`` times, with a principle p drawn at random (seeded):
            critique_i = policy(x, y_{i-1}, p.critique_request)
            y_i        = policy(x, y_{i-1}, p.critique_request, critique_i, p.revision_request)
    SFT on (x, y_final): the policy learns to answer as its own revisions do.

RL-from-AI-feedback phase (here with DPO instead of PPO against a preference model):
    two samples per prompt from the SFT model -> the AI judge compares them under the
    constitution, in both orders -> consistent verdicts become (chosen, rejected) pairs ->
    DPO from the SFT model (which is also the reference).

Every stage writes its output into ``runs/NAME/`` before the next one starts, and a rerun skips
stages whose output is there (delete a file to redo that stage and the ones after it):

    critiques.jsonl       the trace: principle ids, first answer, critiques and revisions
    sft.jsonl             SFT records {id, prompt, completion = final revision}
    sft/                  the SFT run (sft/final: the model; resumes from its checkpoints)
    rlaif_items.jsonl     FeedbackItems: 2 candidates per prompt from the SFT model
    judgments.jsonl       the AI judge's Judgments
    preferences.jsonl     {id, prompt, chosen, rejected}, inconsistent and tied verdicts dropped
    dpo/                  the DPO run (dpo/final: the CAI model)
    summary.json          counts and seconds per stage

With LoRA in the SFT stage, DPO keeps training the same adapter (so ``dpo.model.lora`` must be
unset); the reference model is the SFT model.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from pydantic import Field, field_validator, model_validator

from tether.algorithms.dpo import DPOConfig
from tether.algorithms.sft import SFTConfig
from tether.config import Section, check_run_name, resolve_bundled
from tether.engine import console, latest_checkpoint, start_run
from tether.engine.stages import StagedRun
from tether.engine.trackers import require_trackers
from tether.errors import CheckpointError, ConfigError, TetherError
from tether.feedback.constitution import DEFAULT_CONSTITUTION, Constitution, load_constitution
from tether.feedback.generate import generate_items, load_named_model, read_prompts, read_records, write_jsonl
from tether.feedback.judge import judge_items
from tether.feedback.judge_backends import backend_from_spec
from tether.feedback.preferences import judgments_to_pairs, preference_rows
from tether.feedback.records import FeedbackItem, Judgment
from tether.judges import decide, default_refusal_judge, describe
from tether.judges.rows import prompt_text
from tether.models import load_tokenizer
from tether.rollout.backends import RolloutSettings, make_sampler
from tether.rollout.generate import generate_responses
from tether.rollout.sampler import Sampler

PIPELINE_SETS = "(set by the CAI pipeline)"


def refusal_rate(prompts: list, texts: list[str]) -> float:
    """Share of answers the default refusal judge calls refusals: logged per stage (with the
    judge's name and version), a cheap view of the shift."""
    if not texts:
        return 0.0
    prompts = [prompt_text(p) for p in prompts]
    return round(sum(decide(default_refusal_judge(), prompts, texts)) / len(texts), 4)


class CAIRunSettings(Section):
    run_name: str = "cai"
    output_dir: str = "runs"
    seed: int = 0
    progress: bool = True
    threads: int | None = Field(None, gt=0)
    # `tether train cai --resume` sets this; finished stages are skipped either way.
    resume: bool = False

    def trackers(self) -> list[str]:
        """None: the pipeline logs no metrics itself (its SFT and DPO stages have their own)."""
        return []

    _run_name_stays_inside = field_validator("run_name")(check_run_name)


class PromptSettings(Section):
    path: str = "tether:resources/safety/train.jsonl"
    kinds: list[str] | None = ["harmful"]  # keep rows whose "kind" field is listed; None: all
    limit: int | None = Field(16, gt=0)

    @field_validator("path")
    @classmethod
    def _bundled(cls, value: str) -> str:
        return resolve_bundled(value)


class CritiqueSettings(Section):
    revisions: int = Field(1, gt=0)  # critique -> revision rounds per prompt
    max_new_tokens: int = Field(96, gt=0)
    temperature: float = Field(0.0, ge=0)  # 0: greedy
    batch_size: int = Field(8, gt=0)


class RLAIFSettings(Section):
    prompts: PromptSettings | None = None  # None: the critique stage's prompts
    num_candidates: int = Field(2, ge=2)
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    judge: str = "local:tether:default"  # local:PATH or openai:URL
    judge_model: str | None = None  # model name for an openai judge
    api_key_env: str | None = "OPENAI_API_KEY"
    judge_batch_size: int = Field(4, gt=0)


class CAIConfig(Section):
    train: CAIRunSettings = CAIRunSettings()
    constitution: str = DEFAULT_CONSTITUTION
    prompts: PromptSettings = PromptSettings()
    critique: CritiqueSettings = CritiqueSettings()
    sft: SFTConfig  # sft.model is the starting policy
    rlaif: RLAIFSettings = RLAIFSettings()
    dpo: DPOConfig
    # the engine that writes critiques, revisions and RLAIF candidates (transformers or vllm)
    rollout: RolloutSettings = RolloutSettings()

    @model_validator(mode="before")
    @classmethod
    def _pipeline_fills_paths(cls, data):
        """The stages' data files, model paths and run folders come from the pipeline; a recipe
        that sets them would be silently overridden, so refuse it."""
        if not isinstance(data, dict):
            return data
        owned = {"sft": [("data", "train"), ("train", "run_name"), ("train", "output_dir")],
                 "dpo": [("data", "train"), ("model", "path"), ("train", "run_name"),
                         ("train", "output_dir")]}
        for stage, keys in owned.items():
            section = data.setdefault(stage, {}) or {}
            data[stage] = section
            for group, key in keys:
                # A saved config.yaml holds the placeholder: reading it back must work.
                values = section.get(group) or {}
                if values.get(key, PIPELINE_SETS) != PIPELINE_SETS:
                    raise ValueError(f"{stage}.{group}.{key} is set by the CAI pipeline; remove it")
                section[group] = {**values, key: PIPELINE_SETS}
        return data

    @model_validator(mode="after")
    def _one_adapter(self) -> CAIConfig:
        if self.sft.model.lora is not None and self.dpo.model.lora is not None:
            raise ValueError("with sft.model.lora set, DPO keeps training the SFT adapter: "
                             "remove dpo.model.lora")
        return self

    def run_dir(self) -> Path:
        return Path(self.train.output_dir) / self.train.run_name


# ---- prompts -------------------------------------------------------------------------------------

def load_prompts(settings: PromptSettings) -> list[tuple[str, object, dict]]:
    prompts = read_prompts(settings.path)
    if settings.kinds is not None:
        prompts = [p for p in prompts if p[2].get("kind") in settings.kinds]
    prompts = prompts[:settings.limit] if settings.limit else prompts
    if not prompts:
        raise ConfigError(f"no prompts of kinds {settings.kinds} in {settings.path}")
    return prompts


# ---- stage 1: critique and revision ---------------------------------------------------------------

def critique_and_revise(model, tokenizer, prompts: list[tuple[str, object, dict]],
                        constitution: Constitution, settings: CritiqueSettings, *, seed: int,
                        progress: bool = True, sampler: Sampler | None = None) -> list[dict]:
    """One trace per prompt: ``{"id", "prompt", "initial", "steps": [{"principle", "critique",
    "revision"}], "revision"}``. All prompts advance one step at a time, batched. ``sampler``: the
    engine on ``model`` (``make_sampler``); default tether's own decode loop."""
    rng = random.Random(seed)

    def answer(chats: list[list[dict]], what: str) -> list[str]:
        return generate_responses(model, tokenizer, chats, max_new_tokens=settings.max_new_tokens,
                                  batch_size=settings.batch_size, temperature=settings.temperature,
                                  seed=seed, progress=progress, description=what, sampler=sampler)

    chats = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p)
             for _, p, _ in prompts]
    current = answer(chats, "first answers")
    traces = [{"id": item_id, "prompt": prompt, "initial": text, "steps": []}
              for (item_id, prompt, _), text in zip(prompts, current)]
    for round_ in range(settings.revisions):
        principles = [constitution.sample(rng) for _ in prompts]  # a fresh draw per prompt and round
        asked = [chat + [{"role": "assistant", "content": response},
                         {"role": "user", "content": principle.critique_request}]
                 for chat, response, principle in zip(chats, current, principles)]
        critiques = answer(asked, f"critiques {round_ + 1}")
        revised = answer([chat + [{"role": "assistant", "content": critique},
                                  {"role": "user", "content": principle.revision_request}]
                          for chat, critique, principle in zip(asked, critiques, principles)],
                         f"revisions {round_ + 1}")
        for trace, principle, critique, revision in zip(traces, principles, critiques, revised):
            trace["steps"].append({"principle": principle.id, "critique": critique,
                                   "revision": revision})
        current = revised
    for trace, text in zip(traces, current):
        trace["revision"] = text
    return traces


# ---- the pipeline ---------------------------------------------------------------------------------

def _stage_config(config_class, section, run_dir: Path, name: str, train_path: Path,
                  progress: bool, **model):
    data = section.model_dump(mode="json")
    data["data"]["train"] = str(train_path)
    data["model"].update(model)
    stage_dir = run_dir / name
    data["train"].update(output_dir=str(run_dir), run_name=name,
                         progress=progress and data["train"]["progress"],
                         resume=latest_checkpoint(stage_dir / "checkpoints") is not None)
    return config_class.model_validate(data)


def revise_stage(config: CAIConfig, prompts, constitution: Constitution, run_dir: Path) -> dict:
    """Stage 1: critiques and revisions from the initial policy -> critiques.jsonl, sft.jsonl."""
    seed = config.train.seed
    torch.manual_seed(seed)
    _, model, tokenizer = load_named_model(config.sft.model.path)
    sampler = make_sampler(model, tokenizer, config.rollout, bf16=False)
    try:
        traces = critique_and_revise(model, tokenizer, prompts, constitution, config.critique,
                                     seed=seed, progress=config.train.progress, sampler=sampler)
    finally:
        sampler.close()  # one engine at a time: the SFT and RLAIF stages come next
    del model, sampler
    write_jsonl(run_dir / "critiques.jsonl", traces)
    records = [{"id": t["id"], "prompt": t["prompt"], "completion": t["revision"]}
               for t in traces if t["revision"].strip()]
    if not records:
        raise TetherError("every revision came back empty; nothing to fine-tune on "
                          "(raise critique.max_new_tokens?)")
    write_jsonl(run_dir / "sft.jsonl", records)
    return dict(prompts=len(traces), sft_records=len(records), empty_revisions=len(traces) - len(records),
                refusal_rate_initial=refusal_rate([t["prompt"] for t in traces], [t["initial"] for t in traces]),
                refusal_rate_revised=refusal_rate([t["prompt"] for t in traces], [t["revision"] for t in traces]),
                refusal_judge=describe(default_refusal_judge()))


def candidates_stage(config: CAIConfig, prompts, sft_final: Path, items_path: Path) -> dict:
    """Stage 3: ``num_candidates`` samples per prompt from the SFT model -> rlaif_items.jsonl."""
    rl_prompts = load_prompts(config.rlaif.prompts) if config.rlaif.prompts else prompts
    _, model, tokenizer = load_named_model(str(sft_final))
    items = generate_items(rl_prompts, [("sft", model, tokenizer)],
                           num_candidates=config.rlaif.num_candidates,
                           max_new_tokens=config.rlaif.max_new_tokens,
                           temperature=config.rlaif.temperature, seed=config.train.seed,
                           progress=config.train.progress, rollout=config.rollout)
    del model
    write_jsonl(items_path, items)
    return dict(items=len(items), refusal_rate=refusal_rate(
        [item.prompt for item in items for _ in item.candidates],
        [candidate.text for item in items for candidate in item.candidates]),
        refusal_judge=describe(default_refusal_judge()))


def judge_stage(config: CAIConfig, constitution: Constitution, items_path: Path, judgments_path: Path) -> dict:
    """Stage 4: the AI judge compares each item's candidates, in both orders -> judgments.jsonl."""
    backend = backend_from_spec(config.rlaif.judge, model=config.rlaif.judge_model,
                                api_key_env=config.rlaif.api_key_env,
                                batch_size=config.rlaif.judge_batch_size)
    result = judge_items(read_records(items_path, FeedbackItem), backend, constitution,
                         annotator=f"cai-judge:{backend.name}", progress=config.train.progress)
    del backend
    write_jsonl(judgments_path, result.judgments)
    return dict(judgments=len(result.judgments), comparisons=result.comparisons,
                inconsistent=result.inconsistent, failed=len(result.failed))


def preferences_stage(items_path: Path, judgments_path: Path, pairs_path: Path) -> dict:
    """Stage 5: consistent verdicts -> preference pairs (preferences.jsonl)."""
    pairs = judgments_to_pairs(read_records(items_path, FeedbackItem), read_records(judgments_path, Judgment))
    if not pairs:
        raise TetherError(f"the judge gave no usable verdict (every one tied or inconsistent; "
                          f"see {judgments_path}): no preference pairs to train on. Try more "
                          "prompts, a stronger judge (rlaif.judge), or more varied candidates "
                          "(rlaif.temperature)")
    write_jsonl(pairs_path, preference_rows(pairs))
    return dict(pairs=len(pairs))


def run_cai(config: CAIConfig) -> Path:
    """Run every stage not yet done; returns the final model directory (``dpo/final``).

    Under torchrun, the stages that generate or judge run on rank 0 while the other ranks wait
    (``main_only``); SFT and DPO run on every rank, data-parallel (docs/scaling.md)."""
    from tether.algorithms.dpo import train_dpo
    from tether.algorithms.sft import train_sft

    run_dir = config.run_dir()
    # ---- checked before any model loads or the run folder exists ------------------------------
    require_trackers(config.sft.train.trackers() + config.dpo.train.trackers())
    if config.train.resume and not run_dir.is_dir():
        raise CheckpointError(f"--resume: no run folder {run_dir} to resume")
    constitution = load_constitution(config.constitution)
    prompts = load_prompts(config.prompts)
    if config.rlaif.prompts is not None:
        load_prompts(config.rlaif.prompts)
    load_tokenizer(config.sft.model.path)

    start_run(config)
    progress = config.train.progress
    stages = StagedRun("CAI", run_dir / "summary.json")
    console.print(f"CAI: {len(prompts)} prompts; constitution {constitution.label} "
                  f"({len(constitution.principles)} principles)")
    sft_data, sft_final = run_dir / "sft.jsonl", run_dir / "sft" / "final"
    items_path, judgments_path = run_dir / "rlaif_items.jsonl", run_dir / "judgments.jsonl"
    pairs_path, dpo_final = run_dir / "preferences.jsonl", run_dir / "dpo" / "final"

    # 1. critique -> revision with the initial policy; 2. SFT on the revisions
    stages.run("critique", sft_data, lambda: revise_stage(config, prompts, constitution, run_dir), rank_0_only=True)
    stages.run("sft", sft_final, lambda: train_sft(_stage_config(SFTConfig, config.sft, run_dir, "sft", sft_data,
                                                                 progress)), stage_dir=run_dir / "sft")
    # 3. two candidates per prompt from the SFT model; 4. the AI judge; 5. verdicts -> preference pairs
    stages.run("rlaif-generate", items_path, lambda: candidates_stage(config, prompts, sft_final, items_path),
               rank_0_only=True)
    stages.run("judge", judgments_path, lambda: judge_stage(config, constitution, items_path, judgments_path),
               rank_0_only=True)
    stages.run("preferences", pairs_path, lambda: preferences_stage(items_path, judgments_path, pairs_path),
               rank_0_only=True)
    # 6. DPO from the SFT model
    stages.run("dpo", dpo_final, lambda: train_dpo(_stage_config(DPOConfig, config.dpo, run_dir, "dpo", pairs_path,
                                                                 progress, path=str(sft_final))),
               stage_dir=run_dir / "dpo")
    console.print(f"CAI done; model saved to {dpo_final}")
    return dpo_final
