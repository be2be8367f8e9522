"""The scripted annotator: a reward function (here the safety rule) as the judge of a pipeline."""

import pytest

from tether.errors import ConfigError, TetherError
from tether.feedback.constitution import load_constitution
from tether.feedback.judge import judge_items
from tether.feedback.judge_backends import JudgeRequest, ScriptedJudge, backend_from_spec
from tether.feedback.preferences import judgments_to_pairs
from tether.feedback.records import Candidate, FeedbackItem
from tether.rewards.resolve import resolve_reward
from tether.rewards.safety import safety_refusal

REFUSAL = "I can't help with that. It could hurt people."
HELP = "Sure. Run `kill -9` followed by the process id, or use `pkill` with the process name."


def item(item_id, kind, *texts):
    return FeedbackItem(id=item_id, prompt="some request", metadata={"kind": kind}, candidates=[
        Candidate(id=f"c{i}", text=text, model="m") for i, text in enumerate(texts)])


def test_safety_refusal_rewards_refusing_harm_and_helping_otherwise():
    # The default judge (refusal-head) reads the prompt too: with a real request it is surer of the help.
    scores = safety_refusal(["How do I kill a process?"] * 4, [REFUSAL, HELP, REFUSAL, HELP],
                            kind=["harmful", "harmful", "benign", "benign"])
    assert scores[0] > 0.9 and scores[1] < 0.1  # harmful: the refusal wins
    assert scores[2] < 0.1 and scores[3] > 0.9  # benign look-alike: the help wins
    assert resolve_reward("safety_refusal") is safety_refusal


def test_safety_refusal_needs_the_kind_column():
    with pytest.raises(ValueError, match="'kind' column"):
        safety_refusal(["x"], [REFUSAL])


def test_scripted_judge_prefers_by_the_rule_in_both_orders():
    items = [item("harm", "harmful", HELP, REFUSAL), item("benign", "benign", REFUSAL, HELP),
             item("same", "harmful", REFUSAL, REFUSAL)]
    result = judge_items(items, backend_from_spec("scripted:safety_refusal"), load_constitution(), progress=False)
    winners = {j.item_id: j.verdict["winner"] for j in result.judgments}
    assert winners == {"harm": "c1", "benign": "c1", "same": "tie"}
    assert result.inconsistent == 0
    pairs = judgments_to_pairs(items, result.judgments)
    assert sorted((p.chosen, p.rejected) for p in pairs) == sorted([(HELP, REFUSAL), (REFUSAL, HELP)])


def test_scripted_judge_scores_are_reward_differences():
    judge = ScriptedJudge("length_proxy")  # words in the response
    verdicts = judge.judge([JudgeRequest("p", "one two three", "one"), JudgeRequest("p", "a", "a")],
                           load_constitution())
    assert [(v.choice, v.score) for v in verdicts] == [("A", 2.0), ("tie", 0.0)]


def test_scripted_judge_errors_are_named():
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        backend_from_spec("scripted:nope")
    with pytest.raises(ConfigError, match="scripted:REWARD"):
        backend_from_spec("bogus:x")
    judge = ScriptedJudge("safety_refusal")
    with pytest.raises(TetherError, match="'kind' column"):
        judge.judge([JudgeRequest("p", "a", "b")], load_constitution())


def test_on_topic_prefers_the_answer_about_the_request():
    from tether.rewards.relevance import on_topic, request_text

    prompt = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": "How do I kill a Python process?"}]
    assert request_text(prompt) == "How do I kill a Python process?"
    on, drifted = on_topic([prompt, prompt], ["Run kill with the process id, or pkill python, to stop the process.",
                                              "Mocha tortillas are a festive dish for the beach."])
    assert on > drifted + 0.3
    assert resolve_reward("on_topic") is on_topic


def test_tie_margin_turns_small_gaps_into_ties():
    requests = [JudgeRequest("p", "one two three", "one two")]  # length_proxy gap: 1 word
    assert backend_from_spec("scripted:length_proxy").judge(requests, load_constitution())[0].choice == "A"
    wide = backend_from_spec("scripted:length_proxy", tie_margin=1.5)
    assert wide.judge(requests, load_constitution())[0].choice == "tie"
