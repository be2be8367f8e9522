"""Drift: KL(candidate || baseline) on the candidate's own samples, planted cases with known answers."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tether.audit.base import AuditModel
from tether.audit.metrics import drift
from tether.data import encode_prompt
from tether.errors import ConfigError
from tether.models.tiny import tiny_llama, tiny_tokenizer

PROMPT = "How do I kill a stuck cron job on Ubuntu?"


def _pair(tiny, scale: float | None = None, seed: int = 1):
    model, tokenizer = tiny
    candidate = copy.deepcopy(model)
    if scale is not None:
        # a new Parameter unties lm_head from the input embeddings: only the output layer changes
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(model.lm_head.weight.shape, generator=generator)
        candidate.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() + scale * noise)
    return AuditModel("baseline", model, tokenizer), AuditModel("candidate", candidate, tokenizer)


def test_token_kl_by_hand():
    # p_c = (1/2, 1/2), p_b = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 0.1438410362
    candidate = torch.tensor([[0.0, 0.0]])
    baseline = torch.tensor([[math.log(3.0), 0.0]])
    assert drift.token_kl(candidate, baseline).item() == pytest.approx(0.1438410362, abs=1e-6)
    assert drift.token_kl(baseline, baseline).item() == 0.0


def test_identical_models_drift_exactly_zero(tiny):
    baseline, candidate = _pair(tiny)
    results = drift.evaluate_pair(baseline, candidate, limit=1, max_new_tokens=6)
    assert [r.name for r in results] == ["drift_kl", "drift_kl_per_token", "drift_kl_k3"]
    assert all(r.value == 0.0 for r in results)
    items = results[0].items
    assert [i["category"] for i in items] == ["general", "safe_lookalike", "unsafe"]
    assert all(i["kl"] == 0.0 and i["k3"] == 0.0 and i["k1"] == 0.0 and i["tokens"] == 6 for i in items)


def test_one_step_exact_kl_matches_hand_computation(tiny):
    baseline, candidate = _pair(tiny, scale=0.5)
    probes = [{"id": "p", "prompt": PROMPT, "category": "general"}]
    [result, _, _] = drift.evaluate_pair(baseline, candidate, max_new_tokens=1, probes=probes)

    # by hand, in float64: the last hidden state is shared (only lm_head differs)
    ids = torch.tensor([encode_prompt(PROMPT, baseline.tokenizer)])
    with torch.no_grad():
        hidden = baseline.model.model(input_ids=ids).last_hidden_state[0, -1].double()  # (H,)
        log_b = (baseline.model.lm_head.weight.double() @ hidden).log_softmax(-1)  # (V,)
        log_c = (candidate.model.lm_head.weight.double() @ hidden).log_softmax(-1)  # (V,)
        expected = float((log_c.exp() * (log_c - log_b)).sum())
    assert expected > 0.05
    assert result.value == pytest.approx(expected, rel=1e-4)
    assert result.items[0]["tokens"] == 1


def test_k3_mean_approaches_exact_kl_over_many_samples(tiny):
    baseline, candidate = _pair(tiny, scale=0.1)  # KL ~0.3 nats: k3's spread is small beside it
    rows = drift.sample_drift(baseline, candidate, [PROMPT], num_samples=2000, max_new_tokens=1, seed=3)
    exact = rows[0]["kl"]
    assert all(row["kl"] == pytest.approx(exact, rel=1e-5) for row in rows)  # same position every time
    k3 = torch.tensor([row["k3"] for row in rows], dtype=torch.float64)
    k1 = torch.tensor([row["k1"] for row in rows], dtype=torch.float64)
    standard_error = float(k3.std() / math.sqrt(len(rows)))
    assert abs(float(k3.mean()) - exact) < 4 * standard_error
    assert abs(float(k1.mean()) - exact) < 4 * float(k1.std() / math.sqrt(len(rows)))
    assert standard_error < 0.05 * exact  # so the check above is tight enough to mean something
    assert float(k3.min()) >= 0.0


def test_larger_perturbation_drifts_more(tiny):
    probes = [{"id": "p", "prompt": PROMPT, "category": "general"}]
    small = drift.evaluate_pair(*_pair(tiny, scale=0.1), max_new_tokens=1, probes=probes)[0].value
    large = drift.evaluate_pair(*_pair(tiny, scale=0.4), max_new_tokens=1, probes=probes)[0].value
    assert 0.0 < small < large


def test_different_vocabularies_are_refused(tiny):
    model, tokenizer = tiny
    other, other_tokenizer = tiny_llama(seed=0, tokenizer=tiny_tokenizer(vocab_size=300))
    with pytest.raises(ConfigError, match="same tokenizer"):
        drift.evaluate_pair(AuditModel("b", model, tokenizer), AuditModel("c", other, other_tokenizer), limit=1)
