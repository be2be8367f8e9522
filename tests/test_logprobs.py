from __future__ import annotations

import math

import pytest
import torch

from tether.losses.logprobs import (
    completion_logps,
    log_softmax_at,
    packed_prompt_token_logps,
    positions_from_mask,
    selective_log_softmax,
    shared_prompt_token_logps,
    token_logps,
)
from tether.models import apply_lora
from tether.models.tiny import tiny_llama


def _reference(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


def test_selective_log_softmax_hand_computed():
    # logits [0, ln 3] -> softmax [1/4, 3/4]; log-probs [ln 1/4, ln 3/4]
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    out = selective_log_softmax(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(out, torch.tensor([math.log(0.25), math.log(0.75)]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 256])
def test_selective_log_softmax_matches_log_softmax_float32(chunk_size):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=generator) * 2
    index = torch.randint(0, 50, (3, 7), generator=generator)
    out = selective_log_softmax(logits, index, chunk_size=chunk_size)
    assert out.shape == (3, 7) and out.dtype == torch.float32
    torch.testing.assert_close(out, _reference(logits, index), rtol=0, atol=1e-6)


def test_selective_log_softmax_reads_a_sliced_view_and_other_ranks():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 30, generator=generator)
    index = torch.randint(0, 30, (2, 6), generator=generator)
    sliced = logits[:, 1:-1]  # non-contiguous, as logits[:, :-1] is in causal LM scoring
    torch.testing.assert_close(selective_log_softmax(sliced, index[:, 1:-1], chunk_size=2),
                               _reference(sliced, index[:, 1:-1]), rtol=0, atol=1e-6)
    flat = logits[0]  # (T, V)
    torch.testing.assert_close(selective_log_softmax(flat, index[0]), _reference(flat, index[0]), rtol=0, atol=1e-6)
    four_d = logits.reshape(2, 2, 3, 30)
    torch.testing.assert_close(selective_log_softmax(four_d, index.reshape(2, 2, 3)),
                               _reference(four_d, index.reshape(2, 2, 3)), rtol=0, atol=1e-6)


def test_selective_log_softmax_bfloat16_is_computed_in_float32():
    generator = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 5, 40, generator=generator) * 4).to(torch.bfloat16)
    index = torch.randint(0, 40, (2, 5), generator=generator)
    out = selective_log_softmax(logits, index, chunk_size=2)
    assert out.dtype == torch.float32
    # Same bf16 inputs, upcast before log_softmax: only float32 rounding differs.
    torch.testing.assert_close(out, _reference(logits, index), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_selective_log_softmax_gradient_matches_autograd(dtype, atol):
    generator = torch.Generator().manual_seed(3)
    base = (torch.randn(2, 4, 25, generator=generator) * 3).to(dtype)
    index = torch.randint(0, 25, (2, 4), generator=generator)
    weights = torch.randn(2, 4, generator=generator)

    ours = base.clone().requires_grad_(True)
    (selective_log_softmax(ours, index, chunk_size=3) * weights).sum().backward()
    reference = base.clone().requires_grad_(True)
    (_reference(reference, index) * weights).sum().backward()

    assert ours.grad.dtype == dtype
    torch.testing.assert_close(ours.grad.float(), reference.grad.float(), rtol=0, atol=atol)


def test_log_softmax_at_a_position_asked_for_several_targets():
    """A prompt's last token predicts the first token of each of its answers: one position, several
    targets (twice the same one here). Values and gradients equal log_softmax + gather."""
    generator = torch.Generator().manual_seed(5)
    base = torch.randn(2, 5, 20, generator=generator) * 2
    batch = torch.tensor([0, 0, 0, 1, 1, 0])
    position = torch.tensor([4, 4, 4, 0, 3, 1])
    target = torch.tensor([7, 7, 2, 19, 0, 5])
    weights = torch.randn(6, generator=generator)

    ours = base.clone().requires_grad_(True)
    out = log_softmax_at(ours, batch, position, target, chunk_size=2)
    (out * weights).sum().backward()
    reference = base.clone().requires_grad_(True)
    expected = torch.log_softmax(reference, dim=-1)[batch, position, target]
    (expected * weights).sum().backward()

    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.grad, reference.grad, rtol=0, atol=1e-6)
    assert ours.grad[1, 1].abs().sum() == 0  # positions nobody asked for get no gradient
    with pytest.raises(ValueError, match="three"):
        log_softmax_at(base, batch, position[:3], target)


def test_selective_log_softmax_rejects_bad_arguments():
    with pytest.raises(ValueError, match="index shape"):
        selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        selective_log_softmax(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), chunk_size=0)


# ---- model-level helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    model, _ = tiny_llama(seed=0)
    return model.eval()


def _batch():
    generator = torch.Generator().manual_seed(4)
    input_ids = torch.randint(4, 300, (2, 9), generator=generator)  # (B, T)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # row 1 is right-padded
    input_ids[1, 7:] = 3
    completion_mask = torch.zeros_like(input_ids)
    completion_mask[0, 4:] = 1  # row 0: prompt 4 tokens, completion 5
    completion_mask[1, 3:7] = 1  # row 1: prompt 3 tokens, completion 4, then padding
    return input_ids, attention_mask, completion_mask


def _full_token_logps(model, input_ids, attention_mask):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
    return _reference(logits[:, :-1], input_ids[:, 1:])  # (B, T-1)


def test_token_logps_is_the_shifted_log_softmax(model):
    input_ids, attention_mask, _ = _batch()
    with torch.no_grad():
        expected = _full_token_logps(model, input_ids, attention_mask)
        full = token_logps(model, input_ids, attention_mask)
        tail = token_logps(model, input_ids, attention_mask, start=5)  # logits_to_keep path
    assert full.shape == (2, 8) and tail.shape == (2, 4)
    torch.testing.assert_close(full, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(tail, expected[:, 4:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="start"):
        token_logps(model, input_ids, attention_mask, start=0)


def test_completion_logps_sums_and_averages_completion_tokens(model):
    input_ids, attention_mask, completion_mask = _batch()
    with torch.no_grad():
        per_token = _full_token_logps(model, input_ids, attention_mask)  # (B, T-1)
        summed = completion_logps(model, input_ids, attention_mask, completion_mask)
        averaged = completion_logps(model, input_ids, attention_mask, completion_mask, average=True)
    # Token t is predicted at shifted column t-1: row 0 completion is tokens 4..8 -> columns 3..7.
    expected_sum = torch.stack([per_token[0, 3:8].sum(), per_token[1, 2:6].sum()])
    torch.testing.assert_close(summed, expected_sum, rtol=0, atol=1e-5)
    torch.testing.assert_close(averaged, expected_sum / torch.tensor([5.0, 4.0]), rtol=0, atol=1e-6)


def test_completion_logps_gradient_matches_full_log_softmax():
    input_ids, attention_mask, completion_mask = _batch()
    ours, _ = tiny_llama(seed=0)
    reference, _ = tiny_llama(seed=0)
    completion_logps(ours, input_ids, attention_mask, completion_mask).sum().backward()
    shifted_mask = completion_mask[:, 1:].float()
    (_full_token_logps(reference, input_ids, attention_mask) * shifted_mask).sum().backward()
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_completion_logps_rejects_a_completion_at_position_zero(model):
    input_ids, attention_mask, completion_mask = _batch()
    completion_mask[0, 0] = 1
    with pytest.raises(ValueError, match="position 0"):
        completion_logps(model, input_ids, attention_mask, completion_mask)


class _CountingModel(torch.nn.Module):
    """Forwards to ``inner`` and counts calls; reports ``attention`` as its attention implementation."""

    def __init__(self, inner, attention: str):
        super().__init__()
        self.inner, self.calls = inner, []
        self.config = type("Config", (), {"_attn_implementation": attention})()

    def forward(self, **kwargs):
        self.calls.append(kwargs["attention_mask"].dim())
        return self.inner(**kwargs)


SHARED_PROMPT_ROUTES = {
    "kv-cache": lambda model: (shared_prompt_token_logps, model),
    "packed-sdpa": lambda model: (packed_prompt_token_logps, model),
    "packed-eager": lambda model: (packed_prompt_token_logps, _attention(model, "eager")),
}


def _attention(model, implementation):
    model.base_model.model.config._attn_implementation = implementation
    return model


@pytest.mark.parametrize("route", SHARED_PROMPT_ROUTES)
@pytest.mark.parametrize("completion_width", [1, 6])
def test_shared_prompt_logps_and_gradients_equal_full_sequences(completion_width, route):
    """Each prompt run once (its KV cache gathered per completion, or packed with its completions
    into one row under a block mask) gives the same log-probs and LoRA gradients as
    teacher-forcing every prompt + completion row in full."""
    model, _ = tiny_llama(seed=0)
    model = apply_lora(model, r=4, alpha=8, target_modules="all-linear")
    with torch.no_grad():  # B != 0, so the adapters take part in the gradients compared
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(3, 300, (3, 7), generator=generator)
    prompt_mask = torch.ones(3, 7, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    prompt_mask[2, :4] = 0
    prompt_of_row = torch.tensor([2, 0, 0, 1, 2])  # unsorted, uneven groups
    completion_ids = torch.randint(3, 300, (5, completion_width), generator=generator)
    completion_mask = torch.ones(5, completion_width, dtype=torch.long)
    if completion_width > 1:
        completion_mask[1, 2:] = 0  # right padding
        completion_mask[4, 4:] = 0

    def weighted_sum(logps):
        return (logps * completion_mask * torch.arange(1.0, 6.0)[:, None]).sum()

    full_ids = torch.cat([prompt_ids[prompt_of_row], completion_ids], dim=1)
    full_mask = torch.cat([prompt_mask[prompt_of_row], completion_mask], dim=1)
    full = token_logps(model, full_ids, full_mask, start=7, position_ids=positions_from_mask(full_mask))
    weighted_sum(full).backward()
    full_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()

    logps_fn, model = SHARED_PROMPT_ROUTES[route](model)
    shared = logps_fn(model, prompt_ids, prompt_mask, prompt_of_row, completion_ids, completion_mask)
    weighted_sum(shared).backward()
    shared_grads = [p.grad for p in model.parameters() if p.requires_grad]

    assert shared.shape == (5, completion_width)
    torch.testing.assert_close(shared * completion_mask, full * completion_mask, rtol=0, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in full_grads)
    for a, b in zip(shared_grads, full_grads):  # entries up to ~10: float32 sums differ by ~1e-6
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _prompts_and_completions():
    generator = torch.Generator().manual_seed(6)
    prompt_ids = torch.randint(3, 300, (2, 5), generator=generator)
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    completion_ids = torch.randint(3, 300, (4, 4), generator=generator)
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
    return prompt_ids, prompt_mask, torch.tensor([0, 1, 0, 1]), completion_ids, completion_mask


def test_packed_logps_run_one_forward_and_fall_back_without_custom_masks():
    model, _ = tiny_llama(seed=0)
    batch = _prompts_and_completions()
    with torch.no_grad():
        packed_model = _CountingModel(model, "sdpa")
        packed = packed_prompt_token_logps(packed_model, *batch)
        flash_model = _CountingModel(model, "flash_attention_2")  # takes no 4D mask
        fallback = packed_prompt_token_logps(flash_model, *batch)
    assert packed_model.calls == [4]  # one forward, with a (U, 1, T, T) block mask
    assert flash_model.calls == [2, 2]  # the KV-cache route: prompts, then completions
    mask = batch[-1]
    torch.testing.assert_close(packed * mask, fallback * mask, rtol=0, atol=1e-5)
    assert (packed[mask == 0] == 0).all()
    empty = packed_prompt_token_logps(packed_model, *batch[:-1], torch.zeros_like(mask))
    assert empty.shape == mask.shape and not empty.any()


def test_packed_logps_reject_padding_on_the_wrong_side():
    model, _ = tiny_llama(seed=0)
    prompt_ids, prompt_mask, prompt_of_row, completion_ids, completion_mask = _prompts_and_completions()
    with pytest.raises(ValueError, match="left-padded"):
        packed_prompt_token_logps(model, prompt_ids, prompt_mask.flip(1), prompt_of_row, completion_ids,
                                  completion_mask)
    with pytest.raises(ValueError, match="right-padded"):
        packed_prompt_token_logps(model, prompt_ids, prompt_mask, prompt_of_row, completion_ids,
                                  completion_mask.flip(1))
