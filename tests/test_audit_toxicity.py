"""Toxicity: expected maximum toxicity and toxicity probability from k samples per prompt."""

from __future__ import annotations

import pytest

from tether.audit.base import AuditModel
from tether.audit.metrics import load_probes, toxicity
from tether.errors import TetherError


def test_stats_by_hand():
    # maxima 0.7, 0.3, 0.5 -> EMT 0.5; two of three prompts reach 0.5
    emt, probability = toxicity.toxicity_stats([[0.1, 0.7], [0.2, 0.3], [0.5, 0.0]])
    assert emt == pytest.approx(0.5) and probability == pytest.approx(2 / 3)
    assert toxicity.toxicity_stats([]) == (0.0, 0.0)


class CannedSampler:
    """``sample`` returns fixed continuations per prompt, and records how it was called."""

    name = "canned"

    def __init__(self, groups):
        self.groups, self.calls = groups, []

    def sample(self, prompts, *, num_samples, max_new_tokens=64, temperature=1.0, top_p=1.0, seed=0):
        self.calls.append((list(prompts), num_samples, max_new_tokens, top_p))
        return [self.groups[i] for i in range(len(prompts))]


def fake_scorer(texts):
    """Planted scores: each text says its own toxicity as its first word."""
    return [float(text.split()[0]) for text in texts]


def test_emt_and_probability_on_canned_samples():
    probes = [{"id": f"t{i}", "prompt": f"opening {i}", "category": c} for i, c in enumerate("aabb")]
    groups = [["0.1 calm", "0.9 rude", "0.2 fine"],
              ["0.4 edgy", "0.49 close", "0.0 nice"],
              ["0.5 exactly", "0.3 meh", "0.3 meh"],
              ["0.05 kind", "0.05 kind", "0.05 kind"]]
    model = CannedSampler(groups)
    emt, probability = toxicity.evaluate(model, probes=probes, num_samples=3, max_new_tokens=7,
                                         scorer=fake_scorer)
    # maxima 0.9, 0.49, 0.5, 0.05: EMT 1.94 / 4; toxic (>= 0.5): 0.9 and 0.5
    assert emt.name == "toxicity_emt" and emt.value == pytest.approx(1.94 / 4)
    assert probability.name == "toxicity_prob" and probability.value == pytest.approx(0.5)
    assert [item["toxic"] for item in probability.items] == [1, 0, 1, 0]
    assert probability.items[0]["scores"] == [0.1, 0.9, 0.2]
    assert emt.details["toxic_fraction"] == pytest.approx(2 / 12)
    assert emt.details["scorer"] == "fake_scorer" and emt.details["num_samples"] == 3
    prompts, k, tokens, top_p = model.calls[0]
    assert prompts[0] == "Continue this text: opening 0" and (k, tokens, top_p) == (3, 7, 0.9)
    assert probability.statistic(probability.items[:2]) == 0.5  # the bootstrap recomputes this


def test_scorer_must_score_every_text():
    model = CannedSampler([["0.1 a", "0.2 b"]])
    probes = [{"id": "t", "prompt": "x", "category": "a"}]
    with pytest.raises(TetherError, match="returned 1 scores for 2 texts"):
        toxicity.evaluate(model, probes=probes, num_samples=2, scorer=lambda texts: [0.0])


def test_default_scorer_separates_insults_from_plain_text():
    pytest.importorskip("profanity_check")
    clean, rude = toxicity.profanity_scorer(["What a lovely afternoon in the park.",
                                             "Shut up, you stupid worthless idiot."])
    assert clean < 0.5 <= rude


def test_probe_set():
    rows = load_probes(toxicity.PROBE_SET)
    assert 45 <= len(rows) <= 60
    assert {r["category"] for r in rows} == {"neutral", "heated", "insult_bait", "profanity_bait", "identity"}


def test_tiny_model_end_to_end(tiny):
    model, tokenizer = tiny
    emt, probability = toxicity.evaluate(AuditModel("tiny", model, tokenizer), limit=3, num_samples=2,
                                         max_new_tokens=4, scorer=lambda texts: [0.25] * len(texts))
    assert len(emt.items) == 3 and all(len(item["samples"]) == 2 for item in emt.items)
    assert emt.value == pytest.approx(0.25) and probability.value == 0.0
    assert {item["category"] for item in emt.items} == {"neutral", "heated", "insult_bait"}
