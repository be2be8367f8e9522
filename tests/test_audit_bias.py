"""BBQ-style bias: scores on scripted models whose answers are known, and the log-prob path."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest
import torch

from tether.audit.base import AuditModel
from tether.audit.likelihood import option_logprobs, option_logprobs_simple
from tether.audit.metrics import balanced, bias

ITEMS = bias.load_items()
ROWS = {row["prompt"]: row for row in bias.questions(ITEMS)}


class ScriptedChooser(AuditModel):
    """Scores options by a rule over the known question rows: the picked option gets 0, others -5."""

    def __init__(self, pick):
        super().__init__(name="scripted", model=None, tokenizer=None)
        self.pick = pick

    def option_logprobs(self, prompts, options):
        scores = []
        for prompt, choices in zip(prompts, options):
            picked = self.pick(ROWS[prompt])
            scores.append([0.0 if k == picked else -5.0 for k in range(len(choices))])
        return scores


class ScriptedTalker(AuditModel):
    """Answers in text: the letter of the picked option, or its text, by a rule."""

    def __init__(self, reply):
        super().__init__(name="talker", model=None, tokenizer=None)
        self.reply = reply

    def answer(self, prompts, **kwargs):
        return [self.reply(ROWS[prompt]) for prompt in prompts]


def by_name(results):
    return {result.name: result for result in results}


def test_bundled_items_cover_six_categories_balanced():
    assert len(ITEMS) >= 60
    categories = {item["category"] for item in ITEMS}
    assert categories == {"age", "gender", "disability", "nationality", "religion", "socioeconomic"}
    # half the disambiguating sentences agree with the stereotype, in every category
    for category in categories:
        chosen = [item for item in ITEMS if item["category"] == category]
        agrees = sum(item["correct_disambiguated"] == bias.biased_index(item) for item in chosen)
        assert agrees * 2 == len(chosen)


def named_first(item) -> str:
    """Who the ambiguous context names first: "target" or "other" (articles normalized, so
    "a man on welfare" matches the answer "The man on welfare")."""
    def norm(text):
        return re.sub(r"\b(?:an?|his|her)\b", "the", text.lower())

    context = norm(item["context_ambiguous"])
    other = next(i for i in range(3) if i not in (item["target"], item["unknown"]))
    positions = {}
    for who, index in (("target", item["target"]), ("other", other)):
        match = re.search(r"\b" + re.escape(norm(item["answers"][index]).removeprefix("the ")) + r"\b", context)
        assert match, (item["id"], who)
        positions[who] = match.start()
    return min(positions, key=positions.get)


def test_name_order_is_balanced():
    """A model that prefers whoever is named first (or last) must not look biased: in every
    category half the contexts name the stereotyped person first."""
    for category in {item["category"] for item in ITEMS}:
        firsts = [named_first(item) for item in ITEMS if item["category"] == category]
        assert firsts.count("target") == firsts.count("other") == 6, category


def test_default_subset_is_balanced():
    chosen = balanced(ITEMS, bias.DEFAULT_LIMIT)
    assert sum(item["correct_disambiguated"] == bias.biased_index(item) for item in chosen) * 2 == len(chosen)
    assert Counter(item["polarity"] for item in chosen) == {"neg": len(chosen) // 2, "nonneg": len(chosen) // 2}
    assert Counter(named_first(item) for item in chosen) == {"target": len(chosen) // 2, "other": len(chosen) // 2}
    for role in (bias.biased_index, lambda item: item["unknown"]):
        third = len(chosen) // 3
        assert Counter(role(item) for item in chosen) == {0: third, 1: third, 2: third}


def test_position_preference_is_not_bias():
    """A model that always picks option A: answer positions are balanced, so it looks unbiased."""
    for limit in (bias.DEFAULT_LIMIT, len(ITEMS)):
        results = by_name(bias.evaluate(ScriptedChooser(lambda row: 0), limit=limit))
        assert results["bbq_bias_disambiguated"].value == 0.0
        assert results["bbq_accuracy_ambiguous"].value == pytest.approx(1 / 3)


def test_always_stereotyped_gives_full_bias():
    results = by_name(bias.evaluate(ScriptedChooser(lambda row: row["biased_index"]), limit=len(ITEMS)))
    assert results["bbq_bias_disambiguated"].value == 1.0
    assert results["bbq_accuracy_ambiguous"].value == 0.0
    # s_AMB = (1 - 0) * 1
    assert results["bbq_bias_ambiguous"].value == 1.0
    assert results["bbq_accuracy_disambiguated"].value == 0.5  # half the disambiguations agree
    assert len(results["bbq_bias_disambiguated"].items) == len(ITEMS)
    per_category = results["bbq_bias_ambiguous"].details["per_category"]
    assert set(per_category) == {"age", "gender", "disability", "nationality", "religion", "socioeconomic"}
    assert all(numbers["bias_disambiguated"] == 1.0 for numbers in per_category.values())


def test_always_unknown_gives_zero_ambiguous_bias():
    results = by_name(bias.evaluate(ScriptedChooser(lambda row: row["unknown_index"]), limit=len(ITEMS)))
    assert results["bbq_accuracy_ambiguous"].value == 1.0
    assert results["bbq_bias_ambiguous"].value == 0.0
    assert results["bbq_accuracy_disambiguated"].value == 0.0
    assert results["bbq_bias_disambiguated"].value == 0.0  # no non-unknown answers: 0 by convention


def test_hand_computed_mixed_model():
    """Correct when told who did it; when not told, follows the stereotype on negative questions
    and says unknown on the others. Half the ambiguous questions are negative, so
    acc_amb = 0.5, bias on ambiguous = 2 * 1 - 1 = 1, s_AMB = (1 - 0.5) * 1 = 0.5; disambiguated
    answers are all correct, half of them stereotype-consistent: s_DIS = 2 * 0.5 - 1 = 0."""

    def pick(row):
        if row["context"] == "disambiguated":
            return row["correct_index"]
        return row["biased_index"] if row["polarity"] == "neg" else row["unknown_index"]

    results = by_name(bias.evaluate(ScriptedChooser(pick), limit=len(ITEMS)))
    assert results["bbq_accuracy_ambiguous"].value == 0.5
    assert results["bbq_bias_ambiguous"].value == 0.5
    assert results["bbq_accuracy_disambiguated"].value == 1.0
    assert results["bbq_bias_disambiguated"].value == 0.0
    # the bootstrap statistic recomputes the value from the items
    for result in results.values():
        assert result.statistic(result.items) == result.value


def test_anti_stereotyped_answers_give_negative_bias():
    def pick(row):
        return next(i for i in range(3) if i not in (row["biased_index"], row["unknown_index"]))

    results = by_name(bias.evaluate(ScriptedChooser(pick), limit=12))
    assert results["bbq_bias_disambiguated"].value == -1.0
    assert results["bbq_bias_ambiguous"].value == -1.0
    assert len(results["bbq_accuracy_ambiguous"].items) == 12
    # limit takes items round-robin over categories: 12 items = 2 per category
    assert {row["category"] for row in results["bbq_accuracy_ambiguous"].items} == {
        "age", "gender", "disability", "nationality", "religion", "socioeconomic"}


def test_generate_mode_reads_letters_and_text():
    def reply(row):  # letters on negative questions, option text on the others
        index = row["biased_index"]
        return f"{'ABC'[index]}." if row["polarity"] == "neg" else f"I'd say {row['answers'][index].lower()}."

    results = by_name(bias.evaluate(ScriptedTalker(reply), mode="generate"))
    assert len(results["bbq_bias_disambiguated"].items) == bias.DEFAULT_LIMIT
    assert results["bbq_bias_disambiguated"].value == 1.0
    assert results["bbq_bias_ambiguous"].details["unparsed"] == 0


def test_parse_answer():
    answers = ["The man", "The woman", "Not enough information"]
    assert bias.parse_answer("The woman did.", answers, 2) == 1
    assert bias.parse_answer("(A) obviously", answers, 2) == 0
    assert bias.parse_answer("It cannot be determined.", answers, 2) == 2
    assert bias.parse_answer("Probably the man, not the woman", answers, 2) == 0
    assert bias.parse_answer("purple", answers, 2) is None
    long_first = ["The man with a salaried job", "The man on welfare", "Unknown"]
    assert bias.parse_answer("the man on welfare", long_first, 2) == 1


def test_option_logprobs_match_a_direct_computation(tiny):
    model, tokenizer = tiny
    audit_model = AuditModel("tiny", model, tokenizer, batch_size=4)
    prompt, options = "Who was late?", ["The Dutch colleague", "Unknown"]
    scores = option_logprobs(audit_model, [prompt], [options])[0]
    summed = option_logprobs(audit_model, [prompt], [options], average=False)[0]
    for option, mean_score, total in zip(options, scores, summed):
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": option}],
            tokenize=False)
        head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(full.rstrip("\n"), add_special_tokens=False)["input_ids"]
        start = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        expected = sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))
        assert total == pytest.approx(expected, abs=1e-4)
        assert mean_score == pytest.approx(expected / (len(ids) - start), abs=1e-4)


@pytest.mark.parametrize("average", [True, False])
def test_shared_prefix_scoring_equals_one_forward_per_option(tiny, average):
    # prompts of different lengths in one batch (left padding), 2 or 3 options of different
    # lengths (right padding), a chat-message prompt, and more prompts than one batch
    model, tokenizer = tiny
    audit_model = AuditModel("tiny", model, tokenizer, batch_size=3)
    rows = bias.questions(ITEMS[:3])
    prompts = [row["prompt"] for row in rows] + [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who was late?"}]]
    options = [row["answers"] for row in rows] + [["The Dutch colleague", "Unknown"]]
    fast = option_logprobs(audit_model, prompts, options, average=average)
    simple = option_logprobs_simple(audit_model, prompts, options, average=average)
    assert [len(row) for row in fast] == [3] * 6 + [2]
    for fast_row, simple_row in zip(fast, simple):
        assert fast_row == pytest.approx(simple_row, abs=1e-4)
    assert len({value for row in fast for value in row}) > 10  # real, distinct scores were compared


def test_tiny_model_end_to_end(tiny):
    model, tokenizer = tiny
    results = by_name(bias.evaluate(AuditModel("tiny", model, tokenizer, batch_size=16), limit=6))
    for name in bias.METRICS:
        assert math.isfinite(results[name].value)
        assert len(results[name].items) == 6
    assert all(row["kind"] in ("biased", "counter", "unknown") for row in results["bbq_accuracy_ambiguous"].items)
