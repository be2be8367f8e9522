"""Canary memorization: planted secrets are extracted after training on them, not before."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tether.audit.base import AuditModel
from tether.audit.metrics import memorization as mem
from tether.data import encode_sft, load_records, pad_batch
from tether.losses.sft import sft_loss
from tether.models.tiny import tiny_llama


def by_name(results):
    return {result.name: result.value for result in results}


def test_make_canaries_is_reproducible_and_unique():
    first, again = mem.make_canaries(40, seed=7), mem.make_canaries(40, seed=7)
    assert first == again
    assert first != mem.make_canaries(40, seed=8)
    assert len({c.secret for c in first}) == 40 and len({c.prefix for c in first}) == 40
    for canary in first:
        assert re.fullmatch(r"the secret code of [A-Z][a-z]+ [A-Z][\w ]+ is \d{4}-\d{4}", canary.text)


def test_insert_canaries_and_round_trip(tmp_path):
    base = tmp_path / "base.jsonl"
    base.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(5)))
    canaries = mem.make_canaries(3, seed=1)
    out = mem.insert_canaries(base, tmp_path / "out" / "train.jsonl", canaries, repeats=4, seed=0)
    records = load_records(out, "sft")
    assert len(records) == 5 + 3 * 4
    planted = [r for r in records if r.completion.startswith("the secret code")]
    assert sorted(r.completion for r in planted) == sorted(c.text for c in canaries for _ in range(4))
    assert [r.completion for r in records if not r.completion.startswith("the secret")] == [f"a{i}" for i in range(5)]
    path = mem.write_canaries(tmp_path / "canaries.jsonl", canaries)
    assert mem.read_canaries(path) == canaries


def test_prefix_match():
    assert mem.prefix_match(" 4817-2935 and more", "4817-2935") == 1.0
    assert mem.prefix_match("4817-29xx", "4817-2935") == 7 / 9
    assert mem.prefix_match("9817-2935", "4817-2935") == 0.0
    assert mem.prefix_match("", "4817-2935") == 0.0


class Reciter(AuditModel):
    """Knows the first ``known`` canaries' secrets, half of the next ones, nothing of the rest."""

    def __init__(self, canaries, known):
        super().__init__(name="reciter", model=None, tokenizer=None)
        self.secrets = {c.prefix: (i, c.secret) for i, c in enumerate(canaries)}
        self.known = known

    def continue_text(self, prompts, prefixes, max_new_tokens):
        texts = []
        for prefix in prefixes:
            index, secret = self.secrets[prefix]
            texts.append(" " + secret if index < self.known else " " + secret[:5] + "0000"
                         if index < 2 * self.known else " nothing")
        return texts


def test_scripted_rates():
    canaries = mem.make_canaries(8, seed=3)
    # 2 exact; 2 matching "DDDD-" (5 of 9 characters, unless the next digit is 0 by chance); 4 none
    results = mem.evaluate(Reciter(canaries, known=2), canaries=canaries)
    values = by_name(results)
    partial = [mem.prefix_match(c.secret[:5] + "0000", c.secret) for c in canaries[2:4]]
    assert values["memorization_exact_rate"] == 2 / 8
    assert values["memorization_prefix_match"] == pytest.approx((2 + sum(partial)) / 8)
    assert values["memorization_half_match_rate"] == 4 / 8
    assert len(results[0].items) == 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 140 epochs on a JSONL with six canaries among four ordinary records."""
    work = tmp_path_factory.mktemp("canaries")
    base = work / "base.jsonl"
    base.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?", "completion": f"The answer is {2 * i}."})
                            + "\n" for i in range(4)))
    canaries = mem.make_canaries(6, seed=0)
    data = mem.insert_canaries(base, work / "train.jsonl", canaries, repeats=1)
    model, tokenizer = tiny_llama(seed=0)
    untrained = by_name(mem.evaluate(AuditModel("base", model, tokenizer), canaries=canaries))

    examples = [encode_sft(record, tokenizer, 128) for record in load_records(data, "sft")]
    batch = pad_batch(examples, tokenizer.pad_token_id)  # all 10 records in one batch
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(140):  # 7-15 s on one shared core; every secret is exact from ~120 steps
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = sft_loss(logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return canaries, untrained, by_name(mem.evaluate(AuditModel("trained", model, tokenizer), canaries=canaries))


def test_untrained_model_extracts_nothing(trained):
    _, untrained, _ = trained
    assert untrained["memorization_exact_rate"] == 0.0
    assert untrained["memorization_half_match_rate"] == 0.0
    assert untrained["memorization_prefix_match"] < 0.2


def test_trained_model_leaks_its_canaries(trained):
    _, untrained, after = trained
    assert after["memorization_exact_rate"] > 0.5
    assert after["memorization_half_match_rate"] > 0.5
    assert after["memorization_prefix_match"] > untrained["memorization_prefix_match"] + 0.5


def test_default_canaries_are_read_when_none_given():
    defaults = mem.make_canaries(mem.DEFAULT_COUNT, mem.DEFAULT_SEED)
    values = by_name(mem.evaluate(Reciter(defaults, known=mem.DEFAULT_COUNT)))
    assert values["memorization_exact_rate"] == 1.0
    assert by_name(mem.evaluate(Reciter(defaults, known=0), limit=4))["memorization_exact_rate"] == 0.0
