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


class _LogSoftmaxAt(torch.autograd.Function):
    """``log_softmax(logits[b, n])[y]`` at M given (b, n, y); saves only the (B, N) logsumexp for backward.

    One position may be asked for several targets (a prompt's last token predicts the first token
    of each of its answers). Blocks are rows of one batch element, so a sliced ``logits[:, :-1]``
    is read in place, never copied.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, batch: Tensor, position: Tensor, target: Tensor,  # (B, N, V), (M,) x 3
                chunk_size: int) -> Tensor:  # -> (M,)
        logsumexp = torch.empty(logits.shape[:2], dtype=torch.float32, device=logits.device)  # (B, N)
        for b in range(logits.shape[0]):
            for start in range(0, logits.shape[1], chunk_size):
                block = logits[b, start:start + chunk_size].float()  # (n, V), the only float32 copy
                logsumexp[b, start:start + chunk_size] = torch.logsumexp(block, dim=-1)
        ctx.save_for_backward(logits, batch, position, target, logsumexp)
        ctx.chunk_size = chunk_size
        return logits[batch, position, target].float() - logsumexp[batch, position]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):  # (M,) -> (B, N, V)
        logits, batch, position, target, logsumexp = ctx.saved_tensors
        num_batch, width = logits.shape[:2]
        grad_output = grad_output.float()
        flat = batch * width + position  # (M,)
        # d/dz_v sum_m g_m [z_{y_m} - logsumexp(z)] = sum_m g_m 1[v = y_m] - (sum_m g_m) softmax(z)_v
        grad_sum = torch.zeros(num_batch * width, device=logits.device).index_add_(0, flat, grad_output)
        grad_sum = grad_sum.view(num_batch, width)  # (B, N)
        order = flat.argsort()
        blocks = [(b, start) for b in range(num_batch) for start in range(0, width, ctx.chunk_size)]
        block_starts = [b * width + start for b, start in blocks] + [num_batch * width]
        bounds = torch.searchsorted(flat[order], torch.tensor(block_starts, device=flat.device)).tolist()
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        for k, (b, start) in enumerate(blocks):
            rows = slice(start, start + ctx.chunk_size)
            # In place: one (n, V) float32 temporary instead of four.
            block = torch.sub(logits[b, rows].float(), logsumexp[b, rows, None])  # (n, V)
            block.exp_().mul_(-grad_sum[b, rows, None])
            inside = order[bounds[k]:bounds[k + 1]]  # the targets asked for in this block
            block.index_put_((position[inside] - start, target[inside]), grad_output[inside], accumulate=True)
            grad_logits[b, rows] = block  # casts back to the logits' dtype
        return grad_logits, None, None, None, None


def log_softmax_at(logits: Tensor, batch: Tensor, position: Tensor, target: Tensor,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """``log_softmax(logits, -1)[batch, position, target]``, computed block by block in float32.

    The general form of ``selective_log_softmax``: a position may appear any number of times
    (or not at all). Differentiable (once) with respect to ``logits``.

    Shape:
        logits: (B, N, V)
        batch, position, target: (M,) integer indices into B, N and V
        output: (M,), float32
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if logits.dim() != 3 or not batch.shape == position.shape == target.shape or batch.dim() != 1:
        raise ValueError(f"log_softmax_at takes (B, N, V) logits and three (M,) index tensors, got logits "
                         f"{tuple(logits.shape)} and {tuple(batch.shape)}, {tuple(position.shape)}, "
                         f"{tuple(target.shape)}")
    return _LogSoftmaxAt.apply(logits, batch.long(), position.long(), target.long(), chunk_size)


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
    num_batch, width = index.shape
    batch = torch.arange(num_batch, device=index.device).repeat_interleave(width)  # (B*N,)
    position = torch.arange(width, device=index.device).repeat(num_batch)  # (B*N,)
    return _LogSoftmaxAt.apply(logits, batch, position, index.reshape(-1).long(), chunk_size).reshape(shape)


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

    Under activation checkpointing with gradients, the checkpointed layers drop the KV cache this
    route reads, so the rows go through ``packed_prompt_token_logps`` (the same numbers, one forward).
    """
    if _checkpointing_with_gradients(model):
        if _CUSTOM_MASKS.get(_attention_implementation(model)) is None:
            raise ValueError("train.gradient_checkpointing drops the KV cache shared-prompt scoring reads, and "
                             f"the {_attention_implementation(model)} attention takes no block mask to pack "
                             "the rows instead: use attn_implementation sdpa or eager, or turn checkpointing off")
        return packed_prompt_token_logps(model, prompt_ids, prompt_mask, prompt_of_row, completion_ids,
                                         completion_mask, chunk_size=chunk_size)
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


def _checkpointing_with_gradients(model: nn.Module) -> bool:
    """True when a forward would run checkpointed layers (training mode, gradients on)."""
    return (model.training and torch.is_grad_enabled()
            and any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules()))


# Attention implementations that take a ready-made (B, 1, T, T) mask, and the form they take it in:
# SDPA a boolean "may attend", eager an additive float mask. Flash-attention kernels take none.
_CUSTOM_MASKS = {"sdpa": "bool", "eager": "additive"}


def _attention_implementation(model: nn.Module) -> str | None:
    while isinstance(getattr(model, "module", None), nn.Module):  # DistributedDataParallel
        model = model.module
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def packed_prompt_token_logps(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, prompt_of_row: Tensor,
                              completion_ids: Tensor, completion_mask: Tensor, *,
                              chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """log p(y_t | x, y_<t) for completions that share prompts, in one forward without padding between them.

    Each prompt and all of its completions become one row, ``x y1 y2 ...``, and a block mask lets
    every completion see its prompt and its own earlier tokens only; each completion's positions
    restart where the prompt ends. So a pair (prompt, chosen, rejected) costs one row of
    |x| + |y1| + |y2| tokens, padded only to the batch's longest such row, where the KV-cache
    route (``shared_prompt_token_logps``) pads every answer to the longest answer and runs two
    forwards. The lm_head runs from the shortest prompt's last token on.

    The result and its gradients equal ``token_logps`` on the concatenated rows (to float rounding).
    Attention grows with the square of a packed row, so this suits a few completions per prompt
    (preference pairs); for large groups the KV-cache route is cheaper. Attention kernels that
    take no custom mask (flash-attention) fall back to that route.

    Shape:
        prompt_ids, prompt_mask: (U, S), left-padded
        prompt_of_row: (R,) long, the prompt row each completion continues
        completion_ids, completion_mask: (R, L), right-padded
        output: (R, L) float32; padding columns hold 0
    """
    mask_kind = _CUSTOM_MASKS.get(_attention_implementation(model))
    if mask_kind is None:
        return shared_prompt_token_logps(model, prompt_ids, prompt_mask, prompt_of_row, completion_ids,
                                         completion_mask, chunk_size=chunk_size)
    device = prompt_ids.device
    num_prompts, width = prompt_ids.shape
    prompt_lengths, lengths = prompt_mask.sum(1), completion_mask.sum(1)  # (U,), (R,)
    if not torch.equal(prompt_mask.bool(), torch.arange(width, device=device) >= width - prompt_lengths[:, None]):
        raise ValueError("prompt_mask must be left-padded (padding, then every prompt token)")
    if not bool((prompt_lengths > 0).all()):
        raise ValueError("every prompt needs at least one token")
    if not torch.equal(completion_mask.bool(),
                       torch.arange(completion_ids.shape[1], device=device) < lengths[:, None]):
        raise ValueError("completion_mask must be right-padded (every completion token, then padding)")

    # Where each completion starts in its prompt's row: after the prompt and the completions before it.
    row_ends = prompt_lengths.tolist()
    starts = []
    for prompt, length in zip(prompt_of_row.tolist(), lengths.tolist()):
        starts.append(row_ends[prompt])
        row_ends[prompt] += length
    total = max(row_ends)
    input_ids = torch.zeros(num_prompts, total, dtype=prompt_ids.dtype, device=device)  # (U, T)
    position_ids = torch.zeros(num_prompts, total, dtype=torch.long, device=device)
    segment = torch.full((num_prompts, total), -1, dtype=torch.long, device=device)  # -1 pad, 0 prompt, r+1

    p_row, p_col = prompt_mask.nonzero(as_tuple=True)
    column = p_col - (width - prompt_lengths[p_row])  # prompt tokens move to the row's start
    input_ids[p_row, column] = prompt_ids[p_row, p_col]
    position_ids[p_row, column] = column
    segment[p_row, column] = 0

    row, token = completion_mask.nonzero(as_tuple=True)  # (K,) each: one entry per completion token
    out = torch.zeros(completion_ids.shape, dtype=torch.float32, device=device)  # (R, L)
    if row.numel() == 0:  # only empty completions: nothing to score
        return out
    packed_row = prompt_of_row[row]
    column = torch.tensor(starts, dtype=torch.long, device=device)[row] + token
    input_ids[packed_row, column] = completion_ids[row, token]
    position_ids[packed_row, column] = prompt_lengths[packed_row] + token
    segment[packed_row, column] = row + 1

    query, key = segment[:, :, None], segment[:, None, :]  # (U, T, 1), (U, 1, T)
    causal = torch.ones(total, total, dtype=torch.bool, device=device).tril()
    allowed = causal & ((key == 0) | (key == query)) & (query >= 0)
    allowed |= torch.eye(total, dtype=torch.bool, device=device)  # padding sees itself: no empty softmax row
    allowed = allowed[:, None]  # (U, 1, T, T)
    if mask_kind == "additive":
        allowed = torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, torch.finfo(torch.float32).min)

    # Token t of a completion is predicted at the token before it: the prompt's last for t = 0.
    source = torch.where(token == 0, prompt_lengths[packed_row] - 1, column - 1)  # (K,)
    first = int(source.min())
    logits = model(input_ids=input_ids, attention_mask=allowed, position_ids=position_ids, use_cache=False,
                   logits_to_keep=total - first).logits  # (U, T - first, V)
    values = log_softmax_at(logits, packed_row, source - first, completion_ids[row, token], chunk_size)  # (K,)
    return out.index_put((row, token), values)  # (R, L)
