"""The AI judge: constitution files, both-orders logic, the local and HTTP backends, pairs."""

import json

import pytest
import torch
from fake_openai_server import FakeJudgeServer

from tether.cli import main
from tether.data import encode_prompt
from tether.errors import ConfigError, TetherError
from tether.feedback.agreement import inconsistency_note, inconsistent_pairs
from tether.feedback.constitution import load_constitution
from tether.feedback.judge import copeland_ranks, judge_items
from tether.feedback.judge_backends import (
    LOCAL_INSTRUCTION,
    LOCAL_PREFILL,
    BackendVerdict,
    JudgeRequest,
    LocalJudge,
    OpenAIJudge,
    backend_from_spec,
    chat_completions_url,
    judge_messages,
    parse_verdict,
)
from tether.feedback.preferences import judgments_to_pairs
from tether.feedback.records import Candidate, FeedbackItem, Judgment
from tether.models.tiny import save_tiny_llama


def make_item(item_id, *texts, prompt="Say hi."):
    return FeedbackItem(id=item_id, prompt=prompt, candidates=[
        Candidate(id=f"c{i}", text=text, model="m") for i, text in enumerate(texts)])


# ---- constitutions -------------------------------------------------------------------------------

def test_the_default_constitution_loads():
    constitution = load_constitution()
    assert constitution.label == "tether-default@1.0"
    assert len(constitution.principles) == 8
    assert len({p.id for p in constitution.principles}) == 8


def test_constitution_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nversion: 2\nprinciples:\n  - {id: a, text: t, critique_request: c}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*principles\.0\.revision_request"):
        load_constitution(path)
    path.write_text("name: x\nversion: 2\nprinciples:\n"
                    + "  - {id: a, text: t, critique_request: c, revision_request: r}\n" * 2)
    with pytest.raises(ConfigError, match="principle id 'a' appears twice"):
        load_constitution(path)
    with pytest.raises(ConfigError, match="not found"):
        load_constitution(tmp_path / "missing.yaml")


# ---- judging both orders -------------------------------------------------------------------------

class ScriptedBackend:
    """Answers from a function of (response_a, response_b)."""

    name = "scripted"

    def __init__(self, decide):
        self.decide, self.requests = decide, []

    def judge(self, requests, constitution, *, progress=True):
        self.requests.extend(requests)
        return [BackendVerdict(self.decide(r.response_a, r.response_b), "raw") for r in requests]


def shorter(a, b):
    return "A" if len(a) < len(b) else "B" if len(b) < len(a) else "tie"


def test_each_pair_is_judged_in_both_orders():
    constitution = load_constitution()
    items = [make_item("short-wins", "no", "a long answer"), make_item("same", "one", "two")]
    backend = ScriptedBackend(shorter)
    result = judge_items(items, backend, constitution)
    assert [(r.response_a, r.response_b) for r in backend.requests] == [
        ("no", "a long answer"), ("a long answer", "no"), ("one", "two"), ("two", "one")]
    assert [j.verdict for j in result.judgments] == [{"winner": "c0"}, {"winner": "tie"}]
    assert result.comparisons == 2 and result.inconsistent == 0 and result.consistency == 1.0
    first = result.judgments[0]
    assert (first.source, first.task, first.shown_left, first.constitution_version) == (
        "ai", "pairwise", "c0", "tether-default@1.0")


def test_a_judge_that_always_picks_a_is_inconsistent_everywhere():
    result = judge_items([make_item("x", "no", "yes please")], ScriptedBackend(lambda a, b: "A"),
                         load_constitution(), annotator="biased")
    judgment = result.judgments[0]
    assert judgment.verdict == {"winner": "tie"}  # the shape the app and exports validate
    assert judgment.reason.splitlines() == ['inconsistent pairs: [["c0", "c1"]]',
                                            "c0 vs c1: c0 (raw); c1 vs c0: c1 (raw)"]
    assert inconsistent_pairs(judgment) == {("c0", "c1")}
    assert judgment.annotator == "biased"
    assert (result.inconsistent, result.consistency) == (1, 0.0)


class ScoredBackend:
    """log p(A) - log p(B) = quality(A) - quality(B) + a first-position bias, like a small judge."""

    name = "scored"
    tie_margin = 0.0

    def __init__(self, quality, bias):
        self.quality, self.bias = quality, bias

    def judge(self, requests, constitution, *, progress=True):
        scores = [self.quality[r.response_a] - self.quality[r.response_b] + self.bias for r in requests]
        return [BackendVerdict("A" if s > 0 else "B", f"{s}", s) for s in scores]


def test_scores_are_debiased_for_position_instead_of_voted():
    # x is better by 0.5, but the judge prefers whatever it reads first by 2.0: both orders say
    # "A", so voting calls it inconsistent; (s1 - s2) / 2 = 0.5 recovers x.
    backend = ScoredBackend({"good": 0.5, "bad": 0.0}, bias=2.0)
    item = make_item("x", "bad", "good")
    debiased = judge_items([item], backend, load_constitution())
    assert debiased.judgments[0].verdict == {"winner": "c1"}
    assert inconsistent_pairs(debiased.judgments[0]) == set()  # kept for preference data
    assert debiased.inconsistent == 1  # the order flip is still counted
    voted = judge_items([item], backend, load_constitution(), debias_position=False)
    assert voted.judgments[0].verdict == {"winner": "tie"}
    assert inconsistent_pairs(voted.judgments[0]) == {("c0", "c1")}


def test_more_than_two_candidates_become_a_copeland_ranking():
    # lengths 3, 1, 6, 1: the two shortest tie with each other and beat the rest
    item = make_item("k4", "abc", "a", "abcdef", "b")
    result = judge_items([item], ScriptedBackend(shorter), load_constitution())
    assert result.comparisons == 6
    assert result.judgments[0].task == "ranking"
    assert result.judgments[0].verdict == {"ranks": {"c0": 2, "c1": 1, "c2": 3, "c3": 1}}
    assert inconsistent_pairs(result.judgments[0]) == set()
    assert copeland_ranks(["x", "y", "z"], {("x", "y"): "x", ("x", "z"): "tie", ("y", "z"): "tie"}) == {
        "x": 1, "y": 3, "z": 2}


def test_an_undecided_pair_fails_its_item_only():
    backend = ScriptedBackend(lambda a, b: None if "??" in a + b else shorter(a, b))
    result = judge_items([make_item("bad", "??", "x"), make_item("ok", "y", "yy")], backend,
                         load_constitution())
    assert result.failed == ["bad"]
    assert [j.item_id for j in result.judgments] == ["ok"]
    assert result.comparisons == 1


# ---- backends -------------------------------------------------------------------------------------

def test_verdict_parsing_is_strict():
    assert parse_verdict("reasons...\n[[A]]") == "A"
    assert parse_verdict("[[C]]") == "tie"
    assert parse_verdict("I pick A") is None
    assert parse_verdict("[[A]] no wait [[B]]") is None
    assert parse_verdict("[[a]]") is None
    assert chat_completions_url("http://h:1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1") == "http://h:1/v1/chat/completions"


def test_openai_backend_against_a_loopback_server(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    items = [make_item("i", "no", "a long answer"), make_item("j", "same", "four")]
    with FakeJudgeServer(fail_first=1, garbage_first=1) as server:
        backend = OpenAIJudge(server.url, "judge-model", api_key_env="JUDGE_KEY", backoff=0.0)
        result = judge_items(items, backend, load_constitution(), progress=False)
    assert [j.verdict for j in result.judgments] == [{"winner": "c0"}, {"winner": "tie"}]
    # 4 comparisons + 1 server error + 1 reply without a single verdict, both retried
    assert len(server.requests) == 6
    assert {r["authorization"] for r in server.requests} == {"Bearer sekret"}
    body = server.requests[-1]["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert "[Response A]\nfour\n\n[Response B]\nsame" in body["messages"][-1]["content"]
    assert "[[C]]" in result.judgments[1].reason  # equally long: the server said tie


def test_openai_backend_gives_up_cleanly():
    request = [JudgeRequest("p", "a", "b")]
    with FakeJudgeServer(garbage_first=10) as server:
        verdicts = OpenAIJudge(server.url, "m", api_key_env=None, max_retries=1,
                               backoff=0.0).judge(request, load_constitution(), progress=False)
        assert verdicts[0].choice is None and server.requests[0]["authorization"] is None
    with FakeJudgeServer(fail_first=10) as server:
        with pytest.raises(TetherError, match="failed 2 times: HTTP 500"):
            OpenAIJudge(server.url, "m", max_retries=1, backoff=0.0).judge(
                request, load_constitution(), progress=False)
    with FakeJudgeServer() as server:
        with pytest.raises(TetherError, match="HTTP 404"):
            OpenAIJudge(server.url + "/v2", "m", backoff=0.0).judge(request, load_constitution(),
                                                                   progress=False)
    with pytest.raises(ConfigError, match="local:PATH"):
        backend_from_spec("http://x")


def test_local_judge_scores_are_next_token_log_prob_differences(tiny):
    model, tokenizer = tiny
    constitution = load_constitution()
    judge = LocalJudge(model, tokenizer, batch_size=3)
    requests = [JudgeRequest("Say hi.", "hi", "no"), JudgeRequest("A longer request here?", "x" * 40, "y"),
                JudgeRequest([{"role": "user", "content": "chat"}], "b", "a")]
    batched = judge.scores(requests, constitution, progress=False)
    for request, score in zip(requests, batched):  # one at a time, no padding, by hand
        ids = encode_prompt(judge_messages(request, constitution, LOCAL_INSTRUCTION, max_chars=1500),
                            tokenizer)
        ids += tokenizer.encode(LOCAL_PREFILL, add_special_tokens=False) + judge.shared_ids
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        assert score == pytest.approx(float(logprobs[tokenizer.encode(" A")[-1]]
                                            - logprobs[tokenizer.encode(" B")[-1]]), abs=1e-4)
    verdicts = judge.judge(requests, constitution, progress=False)
    assert [v.choice for v in verdicts] == ["A" if s > 0 else "B" for s in batched]


# ---- judgments -> preference pairs -------------------------------------------------------------------

def test_judgments_to_pairs_drops_ties_and_inconsistent_verdicts():
    items = [make_item("a", "good", "bad"), make_item("t", "x", "y"), make_item("i", "x", "y"),
             make_item("r", "first", "second", "third")]
    judgments = [
        Judgment(item_id="a", task="pairwise", verdict={"winner": "c0"}, annotator="j"),
        Judgment(item_id="t", task="pairwise", verdict={"winner": "tie"}, annotator="j"),
        Judgment(item_id="i", task="pairwise", verdict={"winner": "c0"}, annotator="j", source="ai",
                 reason=inconsistency_note([("c0", "c1")])),  # (a judge never writes this; dropped all the same)
        Judgment(item_id="r", task="ranking", annotator="j", source="ai",
                 reason=inconsistency_note([("c2", "c0")]), verdict={"ranks": {"c0": 2, "c1": 1, "c2": 3}}),
        Judgment(item_id="missing", task="pairwise", verdict={"winner": "c0"}, annotator="j"),
    ]
    pairs = judgments_to_pairs(items, judgments)
    assert [(p.prompt, p.chosen, p.rejected, p.id) for p in pairs] == [
        ("Say hi.", "good", "bad", "a/j"),
        ("Say hi.", "second", "first", "r/j/0-1"),
        ("Say hi.", "second", "third", "r/j/1-2"),
    ]


# ---- the command line ---------------------------------------------------------------------------------

def test_judge_and_agreement_commands(tmp_path, capsys):
    save_tiny_llama(tmp_path / "judge")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(make_item(f"i{n}", "yes", "no").model_dump_json() + "\n" for n in range(3)))
    out = tmp_path / "ai.jsonl"
    assert main(["judge", "--items", str(items), "--backend", f"local:{tmp_path / 'judge'}",
                 "--out", str(out), "--no-progress"]) == 0
    ai = [Judgment.model_validate_json(line) for line in out.read_text().splitlines()]
    assert [j.item_id for j in ai] == ["i0", "i1", "i2"] and {j.source for j in ai} == {"ai"}
    human = tmp_path / "human.jsonl"
    human.write_text("".join(Judgment(item_id=f"i{n}", task="pairwise", verdict={"winner": w},
                                      annotator="h").model_dump_json() + "\n"
                             for n, w in enumerate(["c0", "c1", "tie"])))
    report_path = tmp_path / "report.json"
    assert main(["judge", "agreement", "--ai", str(out), "--human", str(human),
                 "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["shared_items"] == 3 and report["comparisons"] == 3
    assert "Cohen's kappa" in capsys.readouterr().out
    assert main(["judge", "agreement", "--ai", str(out)]) == 2  # --human missing


def test_ai_verdicts_have_the_shapes_the_labeling_app_accepts():
    from tether.feedback.verdicts import verdict_problem

    items = [make_item("two", "a", "bb"), make_item("three", "a", "bb", "ccc")]
    for decide in (shorter, lambda a, b: "A"):  # decided and inconsistent verdicts alike
        for judgment, item in zip(judge_items(items, ScriptedBackend(decide), load_constitution()).judgments, items):
            assert verdict_problem(judgment.task, judgment.verdict, [c.id for c in item.candidates]) is None
