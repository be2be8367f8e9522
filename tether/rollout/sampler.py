"""Batched sampling of N completions per prompt, with each prompt's KV cache computed once.

For P prompts and N samples each, the decode loop is:

    prefill   the P prompts, left-padded, one forward at batch size P      -> KV cache (P, H, S, D)
    expand    every cache row N times (``repeat_interleave``)              -> KV cache (P*N, H, S, D)
    decode    all P*N rows together, one token per forward, until every row has stopped

so a prompt's tokens go through the model once, not N times (``model.generate`` with
``num_return_sequences=N`` copies the prompt N times before prefill). Rows are grouped:
row r is sample ``r % N`` of prompt ``r // N``.

Each sampled token y_t gets two log-probabilities:

    sampling_logps[t] = log q(y_t | x, y_<t)   q = softmax(z / T) restricted to the top-p nucleus
                                                    and renormalized (the distribution drawn from)
    model_logps[t]    = log p(y_t | x, y_<t)   p = softmax(z), the policy itself at temperature 1

``model_logps`` is what a trainer recomputes with a teacher-forced forward pass (the two agree to
float rounding; tests check 1e-4); ``sampling_logps`` is the behaviour policy for importance
weights when T != 1 or top_p < 1. Greedy decoding (T = 0) is a point mass: sampling_logps = 0.

Left padding is invisible to the model: padded positions are masked out and position ids count
only real tokens, so a prompt sampled alone or beside a longer prompt gives the same logits.

Randomness: one ``torch.Generator`` seeded from ``RolloutConfig.seed`` draws one uniform per row
per step (for all P*N rows, finished or not) and a token is picked by inverse CDF. So the same
prompts, config, batching and device give identical samples, and dropping finished rows from the
batch (``compact``) does not change which tokens are drawn (up to float rounding of kernels whose
results depend on the batch size).

Compaction: a finished row leaves the batch and its KV cache rows are dropped, instead of being
fed padding. It pays when decoding is compute-bound (many rows, large models, long tails of
unfinished rows); on a 2-core CPU it gains little, since a decode step costs nearly as much at 16
rows as at 32 (benchmarks/RESULTS.md, "Measurements behind design choices").

Backends: ``Sampler`` is the interface a trainer calls. ``TransformersSampler`` runs the loop
below on any Hugging Face causal LM (CPU or GPU); ``VLLMSampler`` (tether/rollout/vllm_engine.py)
has the same interface on an in-process vLLM engine. ``tether/rollout/backends.py`` picks one from
``rollout.backend``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from pydantic import Field
from torch import Tensor

from tether.config import Section
from tether.data import encode_prompt
from tether.data.records import Prompt
from tether.losses.logprobs import CACHE_KWARG, output_cache, positions_from_mask
from tether.models import evaluation_mode
from tether.rollout.stopping import (
    FinishReason,
    cut_at_stop,
    end_token_ids,
    find_stop,
    special_stop_ids,
)


class RolloutConfig(Section):
    """How to sample. ``temperature=0`` is greedy; ``stop`` strings are cut from the text unless
    ``include_stop_str_in_output``; ``batch_prompts`` bounds how many prompts (each with its N
    samples) decode together, None meaning all at once."""

    num_samples: int = Field(8, gt=0)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(128, gt=0)
    stop: list[str] = Field(default_factory=list)
    include_stop_str_in_output: bool = False
    seed: int | None = 0  # None draws from torch's global RNG
    batch_prompts: int | None = Field(None, gt=0)
    # Drop finished rows from the decode batch (and their KV cache) instead of feeding padding.
    compact: bool = True


@dataclass(frozen=True)
class Rollout:
    """One sampled completion. ``completion_ids``, ``sampling_logps`` and ``model_logps`` have one
    entry per sampled token, the final EOS / stop-completing token included."""

    prompt_index: int
    sample_index: int
    completion_ids: list[int]
    text: str
    sampling_logps: list[float]
    model_logps: list[float]
    finish_reason: FinishReason


@dataclass
class RolloutBatch:
    """The samples of P prompts x N completions as padded tensors, rows grouped by prompt.

    Shape:
        prompt_ids, prompt_mask: (P*N, S), left-padded (the prompt's last token is column S-1)
        completion_ids, completion_mask: (P*N, L), right-padded with the pad id / 0
        sampling_logps, model_logps: (P*N, L) float32, 0 on padding
        prompt_index: (P*N,), row r holds prompt r // N
        texts, finish_reasons: P*N entries
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    sampling_logps: Tensor
    model_logps: Tensor
    prompt_index: Tensor
    texts: list[str]
    finish_reasons: list[FinishReason]
    num_samples: int

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, row: int) -> Rollout:
        length = int(self.completion_mask[row].sum())
        return Rollout(
            prompt_index=int(self.prompt_index[row]),
            sample_index=row % self.num_samples,
            completion_ids=self.completion_ids[row, :length].tolist(),
            text=self.texts[row],
            sampling_logps=self.sampling_logps[row, :length].tolist(),
            model_logps=self.model_logps[row, :length].tolist(),
            finish_reason=self.finish_reasons[row],
        )

    def __iter__(self) -> Iterator[Rollout]:
        return (self[row] for row in range(len(self)))

    @property
    def rollouts(self) -> list[Rollout]:
        return list(self)

    def sequences(self) -> tuple[Tensor, Tensor, Tensor]:
        """``input_ids, attention_mask, position_ids`` of prompt + completion, for re-scoring.

        Pass ``position_ids``: the prompts are left-padded, and a forward without them would
        count the padding as positions. Completion tokens start at column S.

        Shape: each (P*N, S + L).
        """
        input_ids = torch.cat([self.prompt_ids, self.completion_ids], dim=1)  # (P*N, S+L)
        attention_mask = torch.cat([self.prompt_mask, self.completion_mask], dim=1)  # (P*N, S+L)
        return input_ids, attention_mask, positions_from_mask(attention_mask)


class Sampler(Protocol):
    """Anything that samples completions for RL: the Transformers loop here, vLLM on a GPU later."""

    def sample(self, prompts: Sequence[Prompt], config: RolloutConfig) -> RolloutBatch: ...

    # Prompts given as token ids (multi-turn rollouts continue from the sampled tokens).
    def sample_ids(self, encoded: Sequence[list[int]], config: RolloutConfig) -> RolloutBatch: ...

    # Free the engine (vLLM's KV cache); in-process vLLM runs one engine at a time.
    def close(self) -> None: ...


def sampling_logprobs(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """log q over the vocabulary: softmax(z / T), outside the top-p nucleus set to -inf and the
    rest renormalized. The nucleus is the smallest set of most likely tokens whose probability
    reaches ``top_p`` (at least one token), computed as Hugging Face's ``TopPLogitsWarper`` does.

    Shape: (B, V) -> (B, V), float32.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive; greedy decoding has no distribution")
    scaled = logits.float() / temperature  # (B, V)
    if top_p < 1.0:
        ascending, order = scaled.sort(dim=-1)  # (B, V)
        # Drop tokens whose cumulative probability, counted from the least likely, stays within
        # 1 - top_p; what is left carries at least top_p of the mass.
        outside = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p  # (B, V)
        outside[:, -1] = False  # the most likely token always stays
        scaled = scaled.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    return scaled.log_softmax(dim=-1)


def _inverse_cdf(logprobs: Tensor, uniforms: Tensor) -> Tensor:
    """Token y with cdf(y-1) <= u * total < cdf(y): a draw from softmax(logprobs) per row.

    A token with zero probability adds nothing to the cdf, so no u can land on it.

    Shape: logprobs (B, V), uniforms (B,) in [0, 1) -> (B,) token ids.
    """
    cdf = logprobs.exp().cumsum(dim=-1)  # (B, V)
    total = cdf[:, -1:]  # (B, 1)
    # u * total can round up to total itself; stay strictly below it.
    target = torch.minimum(uniforms[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def pick_tokens(logits: Tensor, config: RolloutConfig, uniforms: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Choose each row's next token; return it with its sampling and model log-probabilities.

    Shape: logits (B, V), uniforms (B,) -> tokens (B,), sampling_logps (B,), model_logps (B,).
    """
    logits = logits.float()
    model_logprobs = logits.log_softmax(dim=-1)  # (B, V), temperature 1
    if config.temperature == 0:
        tokens = logits.argmax(dim=-1)  # (B,)
        sampling = torch.zeros(tokens.shape, dtype=torch.float32, device=logits.device)
    else:
        plain = config.temperature == 1.0 and config.top_p == 1.0
        logprobs = (model_logprobs if plain
                    else sampling_logprobs(logits, config.temperature, config.top_p))  # (B, V)
        tokens = _inverse_cdf(logprobs, uniforms)  # (B,)
        sampling = logprobs.gather(-1, tokens[:, None]).squeeze(1)
    return tokens, sampling, model_logprobs.gather(-1, tokens[:, None]).squeeze(1)


@dataclass
class _Group:
    """What one decode of a group of prompts returns, before batches are joined."""

    prompt_ids: Tensor  # (G*N, S)
    prompt_mask: Tensor  # (G*N, S)
    completion_ids: Tensor  # (G*N, L)
    lengths: Tensor  # (G*N,)
    sampling_logps: Tensor  # (G*N, L)
    model_logps: Tensor  # (G*N, L)
    texts: list[str]
    finish_reasons: list[FinishReason]


class TransformersSampler:
    """The decode loop on a Hugging Face causal LM, with a KV cache shared by a prompt's samples."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token")
        self.pad_id = int(pad)
        self.end_ids = end_token_ids(tokenizer, model)

    def close(self) -> None:
        """Nothing to free: this sampler runs on the trainer's own model."""

    @torch.no_grad()
    def sample(self, prompts: Sequence[Prompt], config: RolloutConfig) -> RolloutBatch:
        """N completions for each prompt, rendered with the chat template; rows grouped by prompt."""
        return self.sample_ids([encode_prompt(prompt, self.tokenizer) for prompt in prompts], config)

    @torch.no_grad()
    def sample_ids(self, encoded: Sequence[list[int]], config: RolloutConfig) -> RolloutBatch:
        """``sample`` on prompts already tokenized: multi-turn rollouts (tether/envs) continue a
        conversation from the exact tokens sampled so far, which re-rendering text may not give."""
        device = self.model.device
        encoded = list(encoded)
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=device).manual_seed(config.seed)
        step = config.batch_prompts or max(len(encoded), 1)
        with evaluation_mode(self.model):
            groups = [self._decode(encoded[start:start + step], config, generator)
                      for start in range(0, len(encoded), step)]
        return self._join(groups, len(encoded), config.num_samples, device)

    def _forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any
                 ) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=True, logits_to_keep=1,
                          **{CACHE_KWARG: cache})

    def _decode(self, encoded: list[list[int]], config: RolloutConfig,
                generator: torch.Generator | None) -> _Group:
        device, n, max_new = self.model.device, config.num_samples, config.max_new_tokens
        width = max(len(ids) for ids in encoded)
        prompt_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            prompt_ids[row, width - len(ids):] = torch.tensor(ids)
            prompt_mask[row, width - len(ids):] = 1
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)  # (G, S)
        positions = positions_from_mask(prompt_mask)  # (G, S)

        # ---- prefill once per prompt, then give each of its N samples a copy of the cache
        output = self._forward(prompt_ids, prompt_mask, positions, None)
        cache = output_cache(output)
        cache.batch_repeat_interleave(n)  # (G, H, S, D) -> (G*N, H, S, D) in every layer
        logits = output.logits[:, -1].repeat_interleave(n, dim=0)  # (R, V), R = G*N
        rows_total = len(encoded) * n
        attention_mask = prompt_mask.repeat_interleave(n, dim=0)  # (R, S), grows a column a step
        next_position = positions[:, -1:].repeat_interleave(n, dim=0) + 1  # (R, 1)

        completion_ids = torch.full((rows_total, max_new), self.pad_id, dtype=torch.long, device=device)
        sampling_logps = torch.zeros((rows_total, max_new), dtype=torch.float32, device=device)
        model_logps = torch.zeros((rows_total, max_new), dtype=torch.float32, device=device)
        lengths = torch.zeros(rows_total, dtype=torch.long, device=device)
        finish_reasons: list[FinishReason] = ["length"] * rows_total
        texts: list[str | None] = [None] * rows_total
        generated: list[list[int]] = [[] for _ in range(rows_total)]
        end_ids = torch.tensor(sorted(self.end_ids), dtype=torch.long, device=device)
        stop_ids = torch.tensor(sorted(special_stop_ids(self.tokenizer, config.stop)),
                                dtype=torch.long, device=device)
        text_stops = [s for s in config.stop if s]

        # rows[i]: which output row batch row i is; running[i]: batch row i has not stopped.
        rows = torch.arange(rows_total, device=device)
        running = torch.ones(rows_total, dtype=torch.bool, device=device)

        # ---- decode: pick a token for every running row, stop rows, feed the tokens back
        for step in range(max_new):
            uniforms = None
            if config.temperature > 0:
                # One draw per output row, every step, so the stream never depends on which
                # rows are still in the batch.
                uniforms = torch.rand(rows_total, generator=generator, device=device)[rows]  # (B,)
            tokens, sampling, model = pick_tokens(logits, config, uniforms)  # (B,) each
            live = rows[running]
            completion_ids[live, step] = tokens[running]
            sampling_logps[live, step] = sampling[running]
            model_logps[live, step] = model[running]
            lengths[live] += 1

            ended_eos = torch.isin(tokens, end_ids) & running  # (B,)
            ended_stop = torch.isin(tokens, stop_ids) & running & ~ended_eos  # (B,)
            for row, token in zip(live.tolist(), tokens[running].tolist(), strict=True):
                generated[row].append(token)
            for row in rows[ended_eos].tolist():
                finish_reasons[row] = "eos"
            for row in rows[ended_stop].tolist():
                finish_reasons[row] = "stop"
            if text_stops:
                for i in (running & ~ended_eos & ~ended_stop).nonzero().squeeze(1).tolist():
                    row = int(rows[i])
                    text = self.tokenizer.decode(generated[row], skip_special_tokens=True)
                    if find_stop(text, text_stops) is not None:
                        ended_stop[i] = True
                        finish_reasons[row] = "stop"
            running = running & ~ended_eos & ~ended_stop  # (B,)
            if step == max_new - 1 or not running.any():
                break

            if config.compact and not running.all():
                keep = running.nonzero().squeeze(1)  # (B',)
                cache.batch_select_indices(keep)
                rows, tokens, running = rows[keep], tokens[keep], running[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            # A stopped row (without compact) is fed padding that no later row attends to.
            tokens = torch.where(running, tokens, self.pad_id)  # (B,)
            attention_mask = torch.cat([attention_mask, running[:, None].long()], dim=1)  # (B, S+t+1)
            output = self._forward(tokens[:, None], attention_mask, next_position, cache)
            logits = output.logits[:, -1]  # (B, V)
            next_position = next_position + 1

        for row, reason in enumerate(finish_reasons):
            text = self.tokenizer.decode(generated[row], skip_special_tokens=True)
            if reason == "stop" and text_stops:
                text = cut_at_stop(text, text_stops, keep_stop=config.include_stop_str_in_output)
            texts[row] = text
        longest = int(lengths.max()) if rows_total else 0
        return _Group(
            prompt_ids=prompt_ids.repeat_interleave(n, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(n, dim=0),
            completion_ids=completion_ids[:, :longest], lengths=lengths,
            sampling_logps=sampling_logps[:, :longest], model_logps=model_logps[:, :longest],
            texts=texts, finish_reasons=finish_reasons)

    def _join(self, groups: list[_Group], num_prompts: int, n: int, device: torch.device
              ) -> RolloutBatch:
        """Stack the groups: prompts padded on the left to one width, completions on the right."""
        width = max((g.prompt_ids.shape[1] for g in groups), default=0)
        longest = max((g.completion_ids.shape[1] for g in groups), default=0)

        def pad(tensor: Tensor, size: int, value: float, left: bool) -> Tensor:
            missing = size - tensor.shape[1]
            return torch.nn.functional.pad(tensor, (missing, 0) if left else (0, missing), value=value)

        def cat(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
            return torch.cat(tensors) if tensors else torch.zeros((0, 0), dtype=dtype, device=device)

        completion_mask = [
            (torch.arange(longest, device=device)[None] < g.lengths[:, None]).long() for g in groups]
        return RolloutBatch(
            prompt_ids=cat([pad(g.prompt_ids, width, self.pad_id, True) for g in groups], torch.long),
            prompt_mask=cat([pad(g.prompt_mask, width, 0, True) for g in groups], torch.long),
            completion_ids=cat([pad(g.completion_ids, longest, self.pad_id, False) for g in groups],
                               torch.long),
            completion_mask=cat(completion_mask, torch.long),
            sampling_logps=cat([pad(g.sampling_logps, longest, 0.0, False) for g in groups],
                               torch.float32),
            model_logps=cat([pad(g.model_logps, longest, 0.0, False) for g in groups], torch.float32),
            prompt_index=torch.arange(num_prompts, device=device).repeat_interleave(n),
            texts=[text for g in groups for text in g.texts],
            finish_reasons=[reason for g in groups for reason in g.finish_reasons],
            num_samples=n,
        )


def sample(model: Any, tokenizer: Any, prompts: Sequence[Prompt],
           config: RolloutConfig | None = None) -> RolloutBatch:
    """N completions per prompt with ``TransformersSampler``; see the module docstring.

    ``list(batch)`` (or ``batch.rollouts``) gives one ``Rollout`` per sample.
    """
    return TransformersSampler(model, tokenizer).sample(prompts, config or RolloutConfig())
