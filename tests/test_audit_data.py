"""Preference-data audit: a planted length bias is the top concept; planted label swaps rank first."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tether.audit import data_audit as da
from tether.data import PreferenceRecord, load_records
from tether.judges.refusal_patterns import RefusalPatternsJudge

WORDS = "the model answer explains data value point step result idea this that with for".split()


def response(rng: random.Random, words: int, *, list_items: int = 0, hedge: bool = False) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
    if hedge:
        text = "I think " + text
    return text + "".join(f"\n- item {i}" for i in range(list_items))


def length_biased_pairs(n: int, p_longer: float, seed: int = 0) -> list[PreferenceRecord]:
    """Pairs of random lengths; the longer one is chosen with probability ``p_longer``. List items
    and hedges are drawn independently of the label and never change which response is longer."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        short = rng.randint(5, 40)
        long = short + rng.randint(10, 40)  # more than a hedge and two list items add (8 words)
        a = response(rng, long, list_items=rng.choice([0, 0, 2]), hedge=rng.random() < 0.3)
        b = response(rng, short, list_items=rng.choice([0, 0, 2]), hedge=rng.random() < 0.3)
        chosen, rejected = (a, b) if rng.random() < p_longer else (b, a)
        records.append(PreferenceRecord(prompt=f"Question {i}?", chosen=chosen, rejected=rejected, id=f"p{i}"))
    return records


def test_concept_features():
    features = da.concept_features(["Great question! I think it **might** work:\n# Plan\n- a\n- b",
                                    "I can't help with that.", "you stupid idiot"],
                                   toxicity=da.toxicity_scorer(), refusal_judge=RefusalPatternsJudge())
    assert features["length_words"].tolist() == [13, 5, 3]  # whitespace-separated, markup included
    assert features["flattery"].tolist() == [1, 0, 0]
    assert features["hedging"].tolist() == [2, 0, 0]  # "i think", "might"
    assert features["list_items"].tolist() == [2, 0, 0]
    assert features["headers"].tolist() == [1, 0, 0]
    assert features["bold"].tolist() == [1, 0, 0]
    assert features["refusal"].tolist() == [0, 1, 0]
    assert features["toxicity"].tolist() == [0, 0, 1]


def test_wilson_interval_and_auroc():
    low, high = da.wilson_interval(9, 10)
    assert (round(low, 4), round(high, 4)) == (0.5958, 0.9821)
    assert da.wilson_interval(0, 0) == (0.0, 1.0)
    assert da.auroc([3, 2, 1, 0], [True, False, True, False]) == 0.75
    assert da.auroc([1, 1], [True, False]) == 0.5


def test_logistic_fit_recovers_a_known_weight():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(4000, 2))
    y = rng.random(4000) < 1 / (1 + np.exp(-(1.5 * d[:, 0])))  # only the first column matters
    weights = da.fit_logistic(d, y.astype(float), l2=1e-6)
    assert weights[0] == pytest.approx(1.5, abs=0.15)
    assert abs(weights[1]) < 0.15


def test_planted_length_bias_is_the_top_concept():
    records = length_biased_pairs(300, 0.9)
    # word salad: the MiniLM judge calls some of it refusals, which is not what this test is about
    report = da.audit_preferences(records, bootstrap=50, toxicity=False, refusal_judge=RefusalPatternsJudge())
    assert report["refusal_judge"]["name"] == "refusal-patterns"
    rates = {row["concept"]: row for row in report["win_rates"]}
    length = rates["length_words"]
    assert length["pairs_differing"] == 300
    assert length["low"] < 0.9 < length["high"] and length["win_rate"] > 0.85
    assert report["top_concept"] == "length_words"
    top, *others = report["regression"]
    assert top["low"] > 0  # interval excludes 0
    # the label-independent concepts: small weights, win rates near 0.5; absent ones weigh exactly 0
    for row in others:
        if row["concept"] in ("hedging", "list_items"):
            assert abs(row["weight"]) < top["weight"] / 4
            assert 0.3 < rates[row["concept"]]["win_rate"] < 0.7
        else:
            assert row["weight"] == row["low"] == row["high"] == 0.0
            assert rates[row["concept"]]["pairs_differing"] == 0


def test_swapped_pairs_rank_first_under_cross_fitting():
    clean = length_biased_pairs(60, 1.0, seed=1)  # the label follows length exactly
    records, planted = da.plant_swaps(clean, 3, seed=0)
    report = da.audit_preferences(records, bootstrap=0, planted=planted, toxicity=False)
    detector = report["suspicious"]["heldout_concepts"]
    assert report["suspicious"]["primary"] == "heldout_concepts"
    assert detector["planted_ranks"] == [1, 2, 3]
    assert detector["auroc"] == 1.0
    assert {row["pair"] for row in detector["top"][:3]} == {f"p{i}" for i in planted}


def test_swaps_among_natural_noise_still_rank_high():
    """With 10% of pairs already against the length rule, a swap looks like that noise: it ranks in
    the suspicious tail, not necessarily first."""
    records, planted = da.plant_swaps(length_biased_pairs(200, 0.9, seed=2), 4, seed=3)
    report = da.audit_preferences(records, bootstrap=0, planted=planted, toxicity=False)
    detector = report["suspicious"]["heldout_concepts"]
    assert detector["auroc"] > 0.75


def test_reward_detector(tmp_path):
    records, planted = da.plant_swaps(length_biased_pairs(30, 1.0, seed=4), 2, seed=0)
    report = da.audit_preferences(records, bootstrap=0, planted=planted, toxicity=False,
                                  reward="test_audit_data:length_reward")
    assert report["suspicious"]["primary"] == "reward"
    assert report["suspicious"]["reward"]["planted_ranks"] == [1, 2]


def length_reward(prompts, completions, **columns):
    return [float(len(c.split())) for c in completions]


def trl_chat_length(completions, **kwargs):
    """A TRL conversational reward, unchanged: completions by keyword, as message lists."""
    return [float(len(c[0]["content"].split())) for c in completions]


def test_reward_margins_give_trl_rewards_message_completions_after_chat_prompts():
    chat = [{"role": "user", "content": "Explain."}]
    records = [PreferenceRecord(prompt=chat, chosen="Here is a long answer.", rejected="No."),
               PreferenceRecord(prompt=chat, chosen=[{"role": "assistant", "content": "Two words."}],
                                rejected=[{"role": "assistant", "content": "One."}])]
    assert da.reward_margins(records, "test_audit_data:trl_chat_length").tolist() == [4.0, 1.0]


def test_implicit_reward_detector(tmp_path):
    """A short DPO run on data with two swapped pairs: the policy learns the majority direction,
    so the swapped pairs keep negative implicit-reward margins."""
    from tether.algorithms.dpo import PreferenceExamples, collate_pairs, pair_logps
    from tether.data import encode_preference
    from tether.losses.dpo import dpo_loss
    from tether.models import save_model
    from tether.models.tiny import tiny_llama

    rng = random.Random(0)
    helpful = ["Sure, here is how it works.", "Here is the answer, step by step.", "Good idea: start with the data."]
    curt = ["No.", "Cannot say.", "Ask someone else."]
    clean = [PreferenceRecord(prompt=f"How do I do task {i}?", chosen=rng.choice(helpful), rejected=rng.choice(curt),
                              id=f"t{i}") for i in range(20)]
    records, planted = da.plant_swaps(clean, 2, seed=1)

    model, tokenizer = tiny_llama(seed=0)
    save_model(model, tokenizer, tmp_path / "reference")
    examples = PreferenceExamples([encode_preference(r, tokenizer, 128) for r in records])
    batch = collate_pairs(examples, list(range(len(records))), tokenizer.pad_token_id)
    with torch.no_grad():
        ref_chosen, ref_rejected = pair_logps(model, batch, average=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    # Ten steps: early in training the swapped pairs sit at margins near -2, clean ones above 1.4.
    # Trained much longer, a tiny model memorizes each prompt, swaps included, and the gap closes.
    for _ in range(10):
        chosen, rejected = pair_logps(model, batch, average=False)
        out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1)
        out.losses.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    save_model(model, tokenizer, tmp_path / "policy")

    report = da.audit_preferences(records, policy=str(tmp_path / "policy"), reference=str(tmp_path / "reference"),
                                  bootstrap=0, planted=planted, toxicity=False)
    detector = report["suspicious"]["implicit_reward"]
    assert report["suspicious"]["primary"] == "implicit_reward"
    assert detector["planted_ranks"] == [1, 2]
    assert detector["auroc"] == 1.0
    assert detector["top"][0]["suspicion"] > 0  # a negative margin: the policy prefers the "rejected"


def test_rankings_load_as_pairs(tmp_path):
    path = tmp_path / "ranks.jsonl"
    path.write_text('{"prompt": "q", "responses": ["a b c", "d", "e f"], "ranks": [2, 1, 3]}\n')
    pairs = da.load_pairs(path)
    assert [(p.chosen, p.rejected) for p in pairs] == [("d", "a b c"), ("a b c", "e f"), ("d", "e f")]


def test_cli_writes_json_and_plot(tmp_path, capsys):
    path = tmp_path / "prefs.jsonl"
    with path.open("w") as handle:
        for record in length_biased_pairs(80, 0.9, seed=5):
            handle.write(json.dumps({"id": record.id, "prompt": record.prompt, "chosen": record.chosen,
                                     "rejected": record.rejected}) + "\n")
    status = da.main([str(path), "--out", str(tmp_path / "out"), "--bootstrap", "20", "--plant-swaps", "2"])
    assert status == 0
    report = json.loads((tmp_path / "out" / "audit_data.json").read_text())
    assert report["top_concept"] == "length_words"
    assert report["pairs"] == len(load_records(path, "preference"))
    assert "toxicity" in report["concepts"]
    assert len(report["suspicious"]["heldout_concepts"]["planted_ranks"]) == 2
    assert (tmp_path / "out" / "concept_win_rates.png").stat().st_size > 1000
