"""The rollout sampler: grouping, seeds, greedy parity with HF generate, padding invariance,
log-probs that match a teacher-forced re-scoring, stop strings, EOS, and length limits."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from tether.models.tiny import tiny_llama
from tether.rollout.sampler import (
    RolloutConfig,
    pick_tokens,
    positions_from_mask,
    sample,
    sampling_logprobs,
)
from tether.rollout.stopping import cut_at_stop, end_token_ids, find_stop, special_stop_ids

PROMPTS = ["Hello", "What is 12 plus 7? Answer with the number only, please.", "Hi"]


@pytest.fixture(scope="module")
def varied():
    """A tiny Llama with weights drawn at std 0.4: its greedy outputs vary from token to token
    and it writes <|im_end|> on some prompts (the default init repeats one token forever)."""
    model, tokenizer = tiny_llama(seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.4)
    return model.eval(), tokenizer


def _greedy(**overrides) -> RolloutConfig:
    return RolloutConfig(**{"num_samples": 1, "temperature": 0.0, "max_new_tokens": 16, **overrides})


# ---- the distribution and the draw ------------------------------------------------------------

def test_sampling_logprobs_temperature_and_top_p_hand_computed():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    # T = 2: softmax(ln p / 2) is proportional to sqrt(p)
    roots = torch.tensor([0.5, 0.3, 0.2]).sqrt()
    torch.testing.assert_close(sampling_logprobs(logits, 2.0, 1.0), (roots / roots.sum()).log()[None],
                               rtol=0, atol=1e-6)
    # top_p = 0.6: ascending cumulative [0.2, 0.5, 1.0]; 0.2 <= 0.4 drops the 0.2 token; the
    # nucleus {0.5, 0.3} renormalizes to [0.625, 0.375]
    nucleus = sampling_logprobs(logits, 1.0, 0.6)
    torch.testing.assert_close(nucleus[0, :2], torch.tensor([math.log(0.625), math.log(0.375)]),
                               rtol=0, atol=1e-6)
    assert nucleus[0, 2] == float("-inf")
    # top_p = 0.4: only the most likely token is left, with probability 1
    assert sampling_logprobs(logits, 1.0, 0.4)[0].tolist() == [0.0, float("-inf"), float("-inf")]
    with pytest.raises(ValueError, match="temperature must be positive"):
        sampling_logprobs(logits, 0.0, 1.0)


def test_pick_tokens_inverse_cdf_never_picks_a_zero_probability_token():
    # probabilities [0.5, 0.3, 0.2, 0]: cdf [0.5, 0.8, 1.0, 1.0]
    logits = torch.tensor([math.log(0.5), math.log(0.3), math.log(0.2), float("-inf")]).repeat(6, 1)
    uniforms = torch.tensor([0.0, 0.49, 0.51, 0.79, 0.81, 1.0 - 2 ** -24])
    tokens, sampling, model = pick_tokens(logits, RolloutConfig(), uniforms)
    assert tokens.tolist() == [0, 0, 1, 1, 2, 2]
    expected = torch.tensor([0.5, 0.5, 0.3, 0.3, 0.2, 0.2]).log()
    torch.testing.assert_close(sampling, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(model, expected, rtol=0, atol=1e-6)


def test_pick_tokens_greedy_has_sampling_logp_zero():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    tokens, sampling, model = pick_tokens(logits, RolloutConfig(temperature=0.0), None)
    assert tokens.tolist() == [1] and sampling.tolist() == [0.0]
    torch.testing.assert_close(model, logits.log_softmax(-1)[:, 1], rtol=0, atol=1e-6)


def test_config_validates():
    with pytest.raises(ValidationError):
        RolloutConfig(top_p=0.0)
    with pytest.raises(ValidationError):
        RolloutConfig(temperature=-1.0)
    with pytest.raises(ValidationError):
        RolloutConfig(num_sample=4)  # typo of num_samples


# ---- batching and seeds -----------------------------------------------------------------------

def test_samples_come_back_grouped_by_prompt(varied):
    model, tokenizer = varied
    batch = sample(model, tokenizer, PROMPTS, RolloutConfig(num_samples=4, max_new_tokens=12))
    assert len(batch) == 12
    assert batch.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    rollouts = batch.rollouts
    pairs = [(r.prompt_index, r.sample_index) for r in rollouts]
    assert pairs == [(p, s) for p in range(3) for s in range(4)]
    # every row's prompt is its own prompt, left-padded
    for row, rollout in enumerate(rollouts):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[rollout.prompt_index]}],
                                            add_generation_prompt=True, return_dict=True)["input_ids"]
        assert batch.prompt_ids[row, batch.prompt_mask[row].bool()].tolist() == list(ids)
        assert batch.prompt_mask[row, -len(ids):].all() and not batch.prompt_mask[row, :-len(ids)].any()
        length = int(batch.completion_mask[row].sum())
        assert batch.completion_mask[row, :length].all() and not batch.completion_mask[row, length:].any()
        assert rollout.completion_ids == batch.completion_ids[row, :length].tolist()
        assert rollout.text == tokenizer.decode(rollout.completion_ids, skip_special_tokens=True)
        assert len(rollout.sampling_logps) == len(rollout.model_logps) == length
    # samples of one prompt share its cache but draw their own tokens
    assert len({tuple(r.completion_ids) for r in rollouts[:4]}) == 4


def test_greedy_samples_of_one_prompt_are_identical(varied):
    model, tokenizer = varied
    batch = sample(model, tokenizer, PROMPTS, _greedy(num_samples=3))
    for prompt in range(3):
        rows = batch.completion_ids[3 * prompt:3 * prompt + 3]
        assert (rows == rows[0]).all()
    assert not torch.equal(batch.completion_ids[0], batch.completion_ids[3])


def test_same_seed_same_samples_and_different_seed_different(varied):
    model, tokenizer = varied
    config = RolloutConfig(num_samples=3, max_new_tokens=10, seed=7)
    first = sample(model, tokenizer, PROMPTS, config)
    second = sample(model, tokenizer, PROMPTS, config)
    assert torch.equal(first.completion_ids, second.completion_ids)
    assert torch.equal(first.sampling_logps, second.sampling_logps)
    assert first.texts == second.texts
    other = sample(model, tokenizer, PROMPTS, config.model_copy(update={"seed": 8}))
    assert not torch.equal(first.completion_ids, other.completion_ids)


def test_compacting_finished_rows_changes_no_sample(varied):
    model, tokenizer = varied
    config = RolloutConfig(num_samples=4, max_new_tokens=24, seed=3, stop=["e"])
    compact = sample(model, tokenizer, PROMPTS, config)
    padded = sample(model, tokenizer, PROMPTS, config.model_copy(update={"compact": False}))
    assert {"stop", "length"} <= set(compact.finish_reasons)  # rows do finish at different steps
    assert torch.equal(compact.completion_ids, padded.completion_ids)
    assert compact.finish_reasons == padded.finish_reasons
    torch.testing.assert_close(compact.model_logps, padded.model_logps, rtol=0, atol=1e-5)


def test_batch_prompts_splits_decoding_and_joins_padded(varied):
    model, tokenizer = varied
    whole = sample(model, tokenizer, PROMPTS, _greedy(num_samples=2))
    split = sample(model, tokenizer, PROMPTS, _greedy(num_samples=2, batch_prompts=2))
    assert torch.equal(whole.prompt_ids, split.prompt_ids)
    assert torch.equal(whole.completion_ids, split.completion_ids)
    assert torch.equal(whole.completion_mask, split.completion_mask)
    torch.testing.assert_close(whole.model_logps, split.model_logps, rtol=0, atol=1e-5)


# ---- correctness against references -----------------------------------------------------------

def test_greedy_equals_hf_generate_token_for_token(varied):
    model, tokenizer = varied
    batch = sample(model, tokenizer, PROMPTS, _greedy(max_new_tokens=20))
    assert "eos" in batch.finish_reasons  # the comparison covers stopping at EOS too
    encoded = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"] for p in PROMPTS]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + list(ids) for ids in encoded])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
    reference = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                               max_new_tokens=20, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id)[:, width:]
    ours = batch.completion_ids
    assert torch.equal(ours, reference[:, :ours.shape[1]])
    assert (reference[:, ours.shape[1]:] == tokenizer.pad_token_id).all()


def test_padded_prompt_gives_the_same_result_as_alone(varied):
    model, tokenizer = varied
    alone = sample(model, tokenizer, ["Hi"], _greedy())
    beside_longer = sample(model, tokenizer, [PROMPTS[1], "Hi"], _greedy())
    length = int(alone.completion_mask[0].sum())
    assert beside_longer.prompt_mask[1].sum() < beside_longer.prompt_mask.shape[1]  # really padded
    assert beside_longer[1].completion_ids == alone[0].completion_ids
    torch.testing.assert_close(beside_longer.model_logps[1, :length], alone.model_logps[0, :length],
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_logps_equal_teacher_forced_rescoring(varied, temperature, top_p):
    model, tokenizer = varied
    config = RolloutConfig(num_samples=3, max_new_tokens=16, temperature=temperature, top_p=top_p, seed=5)
    batch = sample(model, tokenizer, PROMPTS, config)
    input_ids, attention_mask, position_ids = batch.sequences()
    start = batch.prompt_ids.shape[1]
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, start - 1:-1].float()  # (P*N, L): position t predicts token t + 1
    targets = batch.completion_ids[..., None]
    mask = batch.completion_mask.bool()
    model_logps = logits.log_softmax(-1).gather(-1, targets).squeeze(-1)
    flat = logits.reshape(-1, logits.shape[-1])
    sampling_logps = sampling_logprobs(flat, temperature, top_p).reshape(logits.shape)
    sampling_logps = sampling_logps.gather(-1, targets).squeeze(-1)
    torch.testing.assert_close(batch.model_logps[mask], model_logps[mask], rtol=0, atol=1e-4)
    torch.testing.assert_close(batch.sampling_logps[mask], sampling_logps[mask], rtol=0, atol=1e-4)
    assert (batch.model_logps[~mask] == 0).all() and (batch.sampling_logps[~mask] == 0).all()
    if temperature == 1.0 and top_p == 1.0:
        assert torch.equal(batch.sampling_logps, batch.model_logps)


def test_tiny_top_p_behaves_like_greedy(varied):
    model, tokenizer = varied
    greedy = sample(model, tokenizer, PROMPTS, _greedy(num_samples=2))
    nucleus = sample(model, tokenizer, PROMPTS, _greedy(num_samples=2, temperature=1.0, top_p=1e-6))
    assert torch.equal(nucleus.completion_ids, greedy.completion_ids)
    assert (nucleus.sampling_logps == 0).all()  # a one-token nucleus has probability 1
    torch.testing.assert_close(nucleus.model_logps, greedy.model_logps, rtol=0, atol=1e-6)


# ---- stopping ---------------------------------------------------------------------------------

def test_eos_ends_a_completion_and_is_kept_in_ids_not_text(varied):
    model, tokenizer = varied
    batch = sample(model, tokenizer, PROMPTS, _greedy(max_new_tokens=20))
    ends = end_token_ids(tokenizer, model)
    for rollout in batch:
        ended = [token in ends for token in rollout.completion_ids]
        if rollout.finish_reason == "eos":
            assert ended[-1] and not any(ended[:-1])
            assert tokenizer.eos_token not in rollout.text
        else:
            assert rollout.finish_reason == "length" and not any(ended)
            assert len(rollout.completion_ids) == 20


def test_max_new_tokens_gives_length(varied):
    model, tokenizer = varied
    batch = sample(model, tokenizer, [PROMPTS[1]], RolloutConfig(num_samples=2, max_new_tokens=5))
    assert batch.finish_reasons == ["length", "length"]
    assert batch.completion_ids.shape == (2, 5) and batch.completion_mask.sum().item() == 10


def _ascii_stop(text: str) -> str:
    """Two printable ASCII characters from the middle of a greedy completion."""
    for index in range(3, len(text) - 1):
        pair = text[index:index + 2]
        if pair.isascii() and pair.isprintable() and find_stop(text, [pair]) == index:
            return pair
    raise AssertionError(f"no ASCII pair in {text!r}")


@pytest.mark.parametrize("keep", [False, True])
def test_stop_string_stops_and_is_cut_from_text(varied, keep):
    model, tokenizer = varied
    free = sample(model, tokenizer, [PROMPTS[1]], _greedy(max_new_tokens=24))[0]
    stop = _ascii_stop(free.text)
    stopped = sample(model, tokenizer, [PROMPTS[1]],
                     _greedy(max_new_tokens=24, stop=[stop], include_stop_str_in_output=keep))[0]
    assert stopped.finish_reason == "stop"
    index = free.text.find(stop)
    assert stopped.text == free.text[:index + (len(stop) if keep else 0)]
    # ids keep every sampled token, through the one that completed the stop string
    ids = stopped.completion_ids
    assert ids == free.completion_ids[:len(ids)]
    assert stop in tokenizer.decode(ids, skip_special_tokens=True)
    assert stop not in tokenizer.decode(ids[:-1], skip_special_tokens=True)


def test_stopping_helpers():
    assert find_stop("4\n\nDone", ["Done", "\n\n"]) == 1
    assert find_stop("abc", ["x", ""]) is None
    assert cut_at_stop("4\n\nDone", ["\n\n"]) == "4"
    assert cut_at_stop("4\n\nDone", ["\n", "\n\n"], keep_stop=True) == "4\n\n"
    assert cut_at_stop("no stop here", ["\n"]) == "no stop here"
    _, tokenizer = tiny_llama(seed=0)
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert special_stop_ids(tokenizer, ["<|endoftext|>", "abc"]) == {endoftext}
    assert tokenizer.eos_token_id in end_token_ids(tokenizer)


def test_positions_from_mask_count_only_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


def test_model_mode_is_restored(varied):
    model, tokenizer = varied
    model.train()
    try:
        sample(model, tokenizer, ["Hi"], _greedy(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()


def test_generate_responses_splits_prompts_into_even_batches_and_keeps_their_order(varied, monkeypatch):
    from tether.rollout import generate

    model, tokenizer = varied
    prompts = [f"question {'x' * k}" for k in (5, 1, 3, 2, 4)]
    expected = generate.generate_responses(model, tokenizer, prompts, max_new_tokens=3, batch_size=5,
                                           progress=False)
    sizes = []
    real_sample = generate.TransformersSampler.sample
    monkeypatch.setattr(generate.TransformersSampler, "sample",
                        lambda self, batch, config: sizes.append(len(batch)) or real_sample(self, batch, config))
    answers = generate.generate_responses(model, tokenizer, prompts, max_new_tokens=3, batch_size=4,
                                          progress=False)
    assert sizes == [3, 2]  # not 4 + 1: a batch costs its longest decode
    assert answers == expected
    assert generate.generate_responses(model, tokenizer, [], batch_size=4, progress=False) == []
