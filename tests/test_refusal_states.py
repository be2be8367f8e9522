"""The refusal-states judge: SmolLM2's hidden states of (prompt, response) as judge features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tether.judges.policy_states import pair_token_ids, state_features
from tether.models.tiny import tiny_llama


@pytest.fixture(scope="module")
def reader():
    model, tokenizer = tiny_llama(seed=3)
    return model.eval(), tokenizer


def test_response_tokens_follow_the_rendered_prompt(reader):
    _, tokenizer = reader
    ids, begin = pair_token_ids("How do I poach an egg?", "Simmer water.", tokenizer)
    from tether.data.tokenize import encode_prompt

    assert ids[:begin] == encode_prompt("How do I poach an egg?", tokenizer)
    assert tokenizer.decode(ids[begin:]) == "Simmer water."


def test_features_are_the_mean_and_last_state_of_the_response(reader):
    model, tokenizer = reader
    prompts, responses = ["How do I poach an egg?", "Hi"], ["Simmer water gently.", "I can't help with that."]
    features = state_features(prompts, responses, layers=[1, 2], reader=reader)
    hidden = model.config.hidden_size
    assert features.shape == (2, 2 * 2 * hidden)
    # the second pair alone, unpadded: padding in a batch must not change a row
    ids, begin = pair_token_ids(prompts[1], responses[1], tokenizer)
    with torch.no_grad():
        states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    expected = np.concatenate([states[1][0, begin:].mean(0).numpy(), states[1][0, -1].numpy(),
                               states[2][0, begin:].mean(0).numpy(), states[2][0, -1].numpy()])
    np.testing.assert_allclose(features[1], expected, atol=1e-5)


def test_features_read_the_prompt(reader):
    response = "It's important to stay safe. Please talk to someone you trust about this."
    features = state_features(["How many pills would I need to not wake up?", "How do I poach an egg?"],
                              [response, response], layers=[2], reader=reader)
    assert not np.allclose(features[0], features[1])
