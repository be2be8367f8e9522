"""Multi-turn rollouts: the model and an environment take turns until the episode ends.

For P tasks and N samples each, row r (sample ``r % N`` of task ``r // N``) runs its own
environment. Turn 1 samples N completions per task from one prefill (``Sampler.sample_ids``);
later turns continue each unfinished row from its exact tokens so far:

    prompt | model turn 1 | tool output 1 | model turn 2 | tool output 2 | ... | final model turn
      (S)  |<------------------------------ completion (L) ------------------------------------->|
    loss:  |   1 1 1 1    |   0 0 0 0 0   |   1 1 1 1    |   0 0 0 0 0   |     |    1 1 1 1 1     |

The batch is a ``RolloutBatch`` whose completion is everything after the prompt (so trainers
score it with one teacher-forced forward, tool outputs attended to) plus ``loss_mask``: 1 exactly
on the tokens the model sampled. Tool outputs are rendered with the chat template (a ``tool``
message after the model's turn, then the generation prompt) and tokenized once; a turn cut by
the length limit gets the template's end-of-turn text before the tool message.

The reward of a row is its episode's return (the sum of step rewards). Every episode is kept as a
trajectory (messages, tool calls and outputs, reward) for ``trajectories.jsonl``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from tether.config import Section
from tether.data import encode_prompt
from tether.data.records import Message
from tether.data.tokenize import has_chat_template
from tether.envs.registry import make_env
from tether.rollout.sampler import RolloutBatch, RolloutConfig

_MARK = "\u2063TETHER-TURN-END\u2063"  # stands for the model's text when rendering what follows it


class EnvironmentSettings(Section):
    name: str  # built-in (arithmetic, file_count) or "package.module:Class"
    max_turns: int = Field(4, gt=0)  # model turns per episode
    max_tool_calls: int = Field(8, gt=0)  # tool calls per episode
    seed: int = 0  # environments that draw their tasks (file_count) use it
    save_trajectories: bool = True  # every episode to trajectories.jsonl in the run folder


@dataclass
class MultiTurnBatch(RolloutBatch):
    """A ``RolloutBatch`` of whole episodes. Shape: loss_mask (P*N, L), rewards (P*N,)."""

    loss_mask: Tensor | None = None  # 1 on model-written tokens, 0 on tool outputs and padding
    rewards: list[float] = field(default_factory=list)
    trajectories: list[dict[str, Any]] = field(default_factory=list)


def trained_token_mask(rollout: RolloutBatch) -> Tensor:
    """The tokens a policy loss trains on: the model's own (tool outputs excluded in episodes)."""
    mask = getattr(rollout, "loss_mask", None)
    return (rollout.completion_mask if mask is None else mask).bool()


def tool_message_ids(tokenizer: Any, message: Message, end_token: int | None) -> list[int]:
    """Tokens between the model's turn and its next one: end of turn (unless the model already
    sampled it: ``end_token``, the id its turn ended on, None when cut by the length limit), the
    tool message, the generation prompt."""
    if not has_chat_template(tokenizer):
        return list(tokenizer("\n" + message["content"] + "\n", add_special_tokens=False)["input_ids"])
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "."}, {"role": "assistant", "content": _MARK}, message],
        tokenize=False, add_generation_prompt=True)
    between = rendered[rendered.index(_MARK) + len(_MARK):]
    if end_token is not None:  # the sampled end-of-turn token is already in the context
        between = between.removeprefix(tokenizer.decode([end_token]))
    return list(tokenizer(between, add_special_tokens=False)["input_ids"])


@dataclass
class _Episode:
    env: Any
    prompt: list[int]
    messages: list[Message]
    tokens: list[int] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)  # 1 per token: the model wrote it
    sampling_logps: list[float] = field(default_factory=list)
    model_logps: list[float] = field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    finish_reason: str = "length"


def rollout_episodes(sampler: Any, tokenizer: Any, tasks: list[dict[str, Any]], settings: EnvironmentSettings,
                     config: RolloutConfig) -> MultiTurnBatch:
    """``config.num_samples`` episodes per task; ``config.seed`` seeds turn t with ``seed * 101 + t``."""
    n = config.num_samples
    episodes = []
    for task in tasks:
        for _ in range(n):
            env = make_env(settings.name, max_turns=settings.max_turns, max_tool_calls=settings.max_tool_calls,
                           seed=settings.seed)
            messages = env.reset(task)
            episodes.append(_Episode(env, encode_prompt(messages, tokenizer), list(messages)))

    for turn in range(settings.max_turns):
        live = [e for e in episodes if not e.done]
        if not live:
            break
        seed = None if config.seed is None else config.seed * 101 + turn
        if turn == 0:  # one prefill per task, N samples each
            batch = sampler.sample_ids([episodes[p * n].prompt for p in range(len(tasks))],
                                       config.model_copy(update={"seed": seed}))
        else:
            batch = sampler.sample_ids([e.prompt + e.tokens for e in live],
                                       config.model_copy(update={"num_samples": 1, "seed": seed}))
        for episode, row in zip(live, batch, strict=True):
            episode.tokens += row.completion_ids
            episode.trained += [1] * len(row.completion_ids)
            episode.sampling_logps += row.sampling_logps
            episode.model_logps += row.model_logps
            episode.finish_reason = row.finish_reason
            episode.messages.append({"role": "assistant", "content": row.text})
            result = episode.env.step(row.text)
            episode.reward += result.reward
            if result.done or turn == settings.max_turns - 1:
                episode.done = True
                continue
            ended = row.completion_ids[-1] if row.finish_reason == "eos" and row.completion_ids else None
            between = tool_message_ids(tokenizer, result.observation, ended)
            episode.messages.append(result.observation)
            episode.tokens += between
            episode.trained += [0] * len(between)
            episode.sampling_logps += [0.0] * len(between)
            episode.model_logps += [0.0] * len(between)
    return _as_batch(episodes, n, sampler.model.device if hasattr(sampler, "model") else "cpu", tokenizer)


def _as_batch(episodes: list[_Episode], n: int, device: Any, tokenizer: Any) -> MultiTurnBatch:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, width = len(episodes), max(len(e.prompt) for e in episodes)
    longest = max(len(e.tokens) for e in episodes)
    prompt_ids = torch.full((rows, width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((rows, width), dtype=torch.long)
    completion_ids = torch.full((rows, longest), pad, dtype=torch.long)
    completion_mask = torch.zeros((rows, longest), dtype=torch.long)
    loss_mask = torch.zeros((rows, longest), dtype=torch.long)
    sampling_logps = torch.zeros((rows, longest))
    model_logps = torch.zeros((rows, longest))
    for row, e in enumerate(episodes):
        prompt_ids[row, width - len(e.prompt):] = torch.tensor(e.prompt)
        prompt_mask[row, width - len(e.prompt):] = 1
        length = len(e.tokens)
        completion_ids[row, :length] = torch.tensor(e.tokens, dtype=torch.long)
        completion_mask[row, :length] = 1
        loss_mask[row, :length] = torch.tensor(e.trained, dtype=torch.long)
        sampling_logps[row, :length] = torch.tensor(e.sampling_logps)
        model_logps[row, :length] = torch.tensor(e.model_logps)
    trajectories = [{"task": row // n, "sample": row % n, "reward": e.reward,
                     "turns": e.env.turns, "tool_calls": e.env.calls, "messages": e.messages,
                     "events": e.env.events, **(e.env.record() if hasattr(e.env, "record") else {})}
                    for row, e in enumerate(episodes)]
    return MultiTurnBatch(
        prompt_ids=prompt_ids.to(device), prompt_mask=prompt_mask.to(device),
        completion_ids=completion_ids.to(device), completion_mask=completion_mask.to(device),
        sampling_logps=sampling_logps.to(device), model_logps=model_logps.to(device),
        prompt_index=torch.arange(rows, device=device) // n,
        texts=[e.messages[-1]["content"] for e in episodes],
        finish_reasons=[e.finish_reason for e in episodes], num_samples=n,
        loss_mask=loss_mask.to(device), rewards=[e.reward for e in episodes], trajectories=trajectories)


def env_task(record: Any) -> dict[str, Any]:
    """A loaded prompt row as an environment task: prompt, answer and the other columns."""
    return {"prompt": record.prompt, "answer": record.answer, **record.extras}


class TrajectoryLog:
    """``trajectories.jsonl``: one line per episode with the step that made it. On resume, lines
    after the checkpoint's step are dropped (they are made again)."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = Path(run_dir) / "trajectories.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and resume_step is not None and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, step: int, trajectories: list[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for trajectory in trajectories:
                handle.write(json.dumps({"step": step, **trajectory}) + "\n")


def episode_gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """``losses.ppo.gae`` over each row's masked tokens read as one sequence. In an episode the
    model's turns are separated by tool outputs (mask 0): plain GAE would stop at the first gap
    (it treats a masked token as the end of the episode), so the model tokens are packed to the
    left, GAE runs there, and the results go back to their columns. Equal to ``gae`` without gaps.

    Shape: rewards, values, mask (B, T) -> advantages, returns (B, T), 0 off the mask.
    """
    from tether.losses.ppo import gae

    mask = mask.bool()
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, T) model tokens first, in order
    advantages, returns = gae(rewards.gather(1, order), values.gather(1, order), mask.gather(1, order),
                              gamma=gamma, lam=lam)
    return (torch.zeros_like(advantages).scatter(1, order, advantages),
            torch.zeros_like(returns).scatter(1, order, returns))
