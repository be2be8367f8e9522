"""Per-token log-probabilities of given tokens, without a float32 copy of the full-vocabulary logits.

A (B, T, V) float32 log-softmax is the largest tensor in preference training: 8 x 1024 tokens
over a 150k vocabulary is 5 GB. Only one entry per row is needed,

    log p(y | x) = z_y - logsumexp_v z_v,

so we gather z_y and compute the logsumexp a block of rows at a time, casting only that block
to float32. The backward pass is written by hand for the same reason: autograd would otherwise
keep every float32 block alive until backward.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn
from transformers import LlamaForCausalLM

# transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (the old name warns, and
# is due to go in 5.40); 4.x only knows the old one.
CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def output_cache(output) -> object:
    """The KV cache a forward with ``use_cache=True`` returned, under either transformers' name."""
    return output[CACHE_KWARG]

DEFAULT_CHUNK_SIZE = 256  # rows per block: 256 x 150k vocab x 4 bytes = 150 MB at most


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log_softmax(logits)[index] for (B, N, V) logits; saves only the (B, N) logsumexp for backward.

    Blocks are rows of one batch element, so a sliced ``logits[:, :-1]`` is read in place, never copied.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor, chunk_size: int) -> Tensor:  # (B, N, V), (B, N) -> (B, N)
        logsumexp = torch.empty(index.shape, dtype=torch.float32, device=logits.device)  # (B, N)
        for b in range(logits.shape[0]):
            for start in range(0, logits.shape[1], chunk_size):
                block = logits[b, start:start + chunk_size].float()  # (n, V), the only float32 copy
                logsumexp[b, start:start + chunk_size] = torch.logsumexp(block, dim=-1)
        target = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1).float()  # (B, N)
        ctx.save_for_backward(logits, index, logsumexp)
        ctx.chunk_size = chunk_size
        return target - logsumexp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):  # (B, N) -> (B, N, V)
        logits, index, logsumexp = ctx.saved_tensors
        grad_output = grad_output.float()
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        # d/dz_v [z_y - logsumexp(z)] = 1[v = y] - softmax(z)_v
        for b in range(logits.shape[0]):
            for start in range(0, logits.shape[1], ctx.chunk_size):
                rows = slice(start, start + ctx.chunk_size)
                grad = grad_output[b, rows, None]  # (n, 1)
                # In place: one (n, V) float32 temporary instead of four.
                block = torch.sub(logits[b, rows].float(), logsumexp[b, rows, None])  # (n, V)
                block.exp_().mul_(-grad)
                block.scatter_add_(-1, index[b, rows, None], grad)
                grad_logits[b, rows] = block  # casts back to the logits' dtype
        return grad_logits, None, None


def selective_log_softmax(logits: Tensor, index: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """``log_softmax(logits, -1).gather(-1, index)`` computed block by block, in float32.

    Works for float32, bfloat16 and float16 logits; the result is always float32. Differentiable
    (once) with respect to ``logits``; the gradient is ``grad * (onehot(index) - softmax(logits))``.

    Shape:
        logits: (..., V)
        index: (...), integer token ids in [0, V)
        output: (...), float32
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"index shape {tuple(index.shape)} must equal logits shape without the vocabulary "
                         f"dimension, {tuple(logits.shape[:-1])}")
    shape = index.shape
    if logits.dim() == 1:
        logits, index = logits[None, None], index[None, None]
    elif logits.dim() == 2:
        logits, index = logits[None], index[None]
    elif logits.dim() > 3:
        logits, index = logits.flatten(0, -3), index.flatten(0, -2)
    return _SelectiveLogSoftmax.apply(logits, index.long(), chunk_size).reshape(shape)


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that count only real tokens: 0 at each row's first unmasked token.

    Shape: (B, T) -> (B, T); masked positions get 0 (their value never matters).
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def token_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, *, start: int = 1,
                position_ids: Tensor | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """log p(x_t | x_<t) for every position t in [start, T), under a causal language model.

    Standard causal shift: the logits at position t-1 predict token t. With ``start > 1`` the model
    is asked for logits only at positions start-1 .. T-1 (``logits_to_keep``), which skips the
    lm_head over a shared prompt prefix.

    Pass ``position_ids`` for left-padded rows (rollouts), so padding does not count as positions.

    Shape:
        input_ids, attention_mask, position_ids: (B, T)
        output: (B, T - start), float32; column j is the log-prob of input_ids[:, start + j]
    """
    seq_len = input_ids.shape[1]
    if not 1 <= start < seq_len:
        raise ValueError(f"start must be in [1, {seq_len}) for sequences of length {seq_len}, got {start}")
    kwargs = {"logits_to_keep": seq_len - start + 1} if start > 1 else {}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits
    logits = logits[:, -(seq_len - start + 1):-1]  # (B, T - start, V): positions start-1 .. T-2
    return selective_log_softmax(logits, input_ids[:, start:], chunk_size)  # (B, T - start)


def completion_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, *,
                     average: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Log-probability of each sequence's completion: log pi(y | x) = sum_t m_t log p(x_t | x_<t).

    ``completion_mask`` marks completion tokens in ``input_ids`` (1 for y, 0 for prompt and
    padding). With ``average=True`` the sum is divided by the number of completion tokens
    (length-normalised, as TRL's IPO loss uses). Rows without completion tokens give 0.

    Shape:
        input_ids, attention_mask, completion_mask: (B, T)
        output: (B,), float32
    """
    if completion_mask.shape != input_ids.shape:
        raise ValueError(f"completion_mask shape {tuple(completion_mask.shape)} must equal input_ids shape "
                         f"{tuple(input_ids.shape)}")
    mask = completion_mask.bool()  # (B, T)
    if mask[:, 0].any():
        raise ValueError("completion_mask marks position 0, which has no preceding token to predict it from")
    has_completion = mask.any(dim=0)  # (T,)
    # Positions before the earliest completion token in the batch need no logits.
    start = int(has_completion.float().argmax()) if has_completion.any() else input_ids.shape[1] - 1
    logps = token_logps(model, input_ids, attention_mask, start=start, chunk_size=chunk_size)  # (B, T - start)
    mask = mask[:, start:].to(logps.dtype)  # (B, T - start)
    total = (logps * mask).sum(dim=1)  # (B,)
    if average:
        return total / mask.sum(dim=1).clamp(min=1.0)
    return total


def shared_prompt_token_logps(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, prompt_of_row: Tensor,
                              completion_ids: Tensor, completion_mask: Tensor, *,
                              chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """log p(y_t | x, y_<t) for completions that share prompts, each prompt run through the model once.

    A group of N completions of one prompt, teacher-forced as N full sequences, pays for the prompt
    N times. Here the prompts run once (with gradients), their KV cache is gathered to one row per
    completion (``prompt_of_row``), and the completions run on top of it:

        forward 1   prompts x             -> KV cache (U, H, S, D), logits at x's last token
        gather      cache[prompt_of_row]  -> (R, H, S, D)                (differentiable)
        forward 2   y_0 .. y_{L-2} with that cache -> logits predicting y_1 .. y_{L-1}

    The result and its gradients equal ``token_logps`` on the concatenated rows (to float rounding;
    tests check 1e-5): backward reaches the prompt's activations through the gathered cache, once
    per completion that read them.

    Shape:
        prompt_ids, prompt_mask: (U, S), left-padded (column S-1 is every prompt's last token)
        prompt_of_row: (R,) long, the prompt row each completion continues
        completion_ids, completion_mask: (R, L), right-padded
        output: (R, L) float32; padding columns hold the log-prob of the pad id (mask them)
    """
    positions = positions_from_mask(prompt_mask)  # (U, S)
    prompt_out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                       use_cache=True, logits_to_keep=1)
    first_logits = prompt_out.logits[:, -1][prompt_of_row].unsqueeze(1)  # (R, 1, V): predicts y_0
    if completion_ids.shape[1] == 1:
        return selective_log_softmax(first_logits, completion_ids, chunk_size)
    cache = output_cache(prompt_out)
    cache.batch_select_indices(prompt_of_row)  # (U, H, S, D) -> (R, H, S, D) in every layer
    width = completion_ids.shape[1] - 1
    attention_mask = torch.cat([prompt_mask[prompt_of_row], completion_mask[:, :-1]], dim=1)  # (R, S+L-1)
    completion_positions = positions[prompt_of_row, -1:] + 1 + torch.arange(width, device=positions.device)
    rest_logits = model(input_ids=completion_ids[:, :-1], attention_mask=attention_mask,
                        position_ids=completion_positions, use_cache=True, **{CACHE_KWARG: cache}).logits
    logits = torch.cat([first_logits, rest_logits], dim=1)  # (R, L, V)
    return selective_log_softmax(logits, completion_ids, chunk_size)
